/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Who is calling, and may they: the one place that answers it for every face.
 *
 * On the bus the caller is the sender and its effective uid (from the bus, never augmented from /proc,
 * which a caller could race); on a peer connection (Manager.OpenConnection) it is the identity fixed
 * when the connection was opened. A container's methods are for its owner; anybody else needs the
 * manage action. uid 0 is always allowed. Authorization is asynchronous (see polkit.h): a handler calls
 * caller_verify*() before it changes anything and returns 1 without replying when it gets 0. */

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "broker.h"
#include "polkit.h"

const char *caller_name(Broker *b, sd_bus_message *m);
int caller_uid(Broker *b, sd_bus_message *m, uid_t *ret);

/* The sender's effective uid as the bus reports it. */
int caller_bus_sender_uid(sd_bus_message *m, uid_t *ret);

/* The rule itself, without a bus: which polkit checks a caller (caller, caller_uid) needs to act on a
 * container of owner, given the manage check and an optional further one. Root needs none (uid 0 is
 * always allowed); the owner needs only extra; anybody else needs manage too. Returns how many were put
 * in ret. */
size_t caller_checks_needed(const char *caller, uid_t caller_uid, const char *owner, const PolkitCheck *manage,
                            const PolkitCheck *extra, PolkitCheck ret[static 2]);

/* The owner-or-manage rule for a container owned by (owner, owner_uid) at path, plus an optional
 * further check (attach-group). 1: go on; 0: polkit was asked, return 1 from the handler without a
 * reply; negative: refused, error set. */
int caller_verify_owner(Broker *b, sd_bus_message *m, const char *path, const char *owner, uid_t owner_uid,
                        const PolkitCheck *extra, sd_bus_error *error);
