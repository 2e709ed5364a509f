/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Per-user accounting of what the broker holds on a user's behalf: containers, DMA mappings and
 * pinned bytes, charged to the uid of the container's owner (like dbus-broker's user.c charges every
 * connection to its uid). The limits come from the configuration: a "users" entry for the uid (by
 * name or number) wins; otherwise the most generous "groups" entry among the user's unix groups;
 * otherwise "default"; root is unlimited unless it has a "users" entry. Limits are resolved when a
 * user's first object is charged. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "broker.h"
#include "error.h"

struct UserUsage {
        UserUsage *next;
        uid_t uid;
        LimitConfig limits;
        uint64_t containers;
        uint64_t mappings;
        uint64_t pinned_bytes;
        uint64_t fds;
        uint64_t address_space;
};

/* Charges all three or nothing; QuotaExceeded names the limit and its value. */
int quota_charge(Broker *b, uid_t uid, uint64_t containers, uint64_t mappings, uint64_t bytes,
                 BrokerError *e);
/* Charges without checking: what a restarted broker finds held stays held, whatever the limits now. */
int quota_charge_force(Broker *b, uid_t uid, uint64_t containers, uint64_t mappings, uint64_t bytes);
void quota_release(Broker *b, uid_t uid, uint64_t containers, uint64_t mappings, uint64_t bytes);

/* Fds the daemon keeps for the user (memory fds, peer connections) and the address space the memory
 * fds' mappings reserve (limits "fds" and "address_space"); both or nothing. Forced when a restarted
 * daemon adopts what it held. */
int quota_charge_memory(Broker *b, uid_t uid, uint64_t fds, uint64_t address_space, bool force, BrokerError *e);
void quota_release_memory(Broker *b, uid_t uid, uint64_t fds, uint64_t address_space);

/* NULL when the user holds nothing. */
const UserUsage *quota_get(Broker *b, uid_t uid);

/* The limits that apply to uid. */
void quota_resolve_limits(const BrokerConfig *config, uid_t uid, LimitConfig *ret);

void quota_free_all(Broker *b);
