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
        uint64_t fds_in_flight; /* fds of a message still arriving on a peer connection */
};

/* Besides each user's "fds", the fds the daemon keeps for all users other than root together (their
 * "fds", their fds in flight, and one per container) stay below RLIMIT_NOFILE minus a reserve for the
 * daemon itself, root, and what no user is charged for (groups and devices, bounded by the host's
 * hardware): "limits.reserved_fds", by default a quarter of RLIMIT_NOFILE, at least this. Read at each
 * charge, so a changed RLIMIT_NOFILE counts at once. Root is not charged against it. */
#define QUOTA_RESERVED_FDS_MIN 256

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

/* The fds of a message that is still arriving on one of uid's peer connections: checked against "fds"
 * and the overall cap with `allowance` more (one message's worth: a client at its limit still gets its
 * message through and a QuotaExceeded answer, not a closed connection). */
int quota_charge_fds_in_flight(Broker *b, uid_t uid, uint64_t fds, uint64_t allowance, BrokerError *e);
void quota_release_fds_in_flight(Broker *b, uid_t uid, uint64_t fds);

/* The overall cap now (RLIMIT_NOFILE minus the reserve), and the fds charged against it. */
uint64_t quota_total_fds_limit(Broker *b);
uint64_t quota_total_fds(Broker *b);

/* NULL when the user holds nothing. */
const UserUsage *quota_get(Broker *b, uid_t uid);

/* The limits that apply to uid. */
void quota_resolve_limits(const BrokerConfig *config, uid_t uid, LimitConfig *ret);

void quota_free_all(Broker *b);
