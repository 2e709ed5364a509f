/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Peer-to-peer connections (Manager.OpenConnection): a private D-Bus connection over a socketpair that
 * serves the same objects without the round trip through the bus daemon. Its identity is the one of
 * the bus connection that opened it, fixed at that moment: calls on it act as that unique name and
 * uid (ownership, polkit subject, quotas). Containers still belong to the bus connection: closing the
 * peer connection closes nothing, and when the owner leaves the bus its peer connections are closed
 * together with its containers. Signals are only sent on the bus. */

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "broker.h"
#include "error.h"

typedef struct Peer Peer;

/* Peer connections one user (not root) may have open at a time. */
#define PEERS_PER_USER_MAX 16

/* Returns the client's end of a new connection for (owner, uid); -EUSERS beyond PEERS_PER_USER_MAX or
 * OWNERS_MAX owners. The daemon's end costs PEER_CONNECTION_FDS of uid's "fds" (peer-relay.h):
 * QuotaExceeded in e beyond them or beyond the overall cap. */
int peer_open(Broker *b, const char *owner, uid_t uid, int *ret_fd, BrokerError *e);
void peer_close_all_of(Broker *b, const char *owner);
void peer_free_all(Broker *b);

/* 1 and the identity fixed at opening when bus is a peer connection, 0 otherwise (see caller.h). */
int peer_identity(Broker *b, sd_bus *bus, const char **ret_owner, uid_t *ret_uid);
