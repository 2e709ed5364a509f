/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The daemon's side of a peer connection reads the client's socket itself and passes what it read on to
 * sd-bus through a socketpair, so that what one unprivileged client may make the daemon hold is bounded:
 * sd-bus allocates the size a message's header declares (up to 128 MiB) and keeps the fds that came
 * with it until the message is whole, and has no knob for either.
 *
 *   client socket --(relay: SASL lines, then D-Bus framing checked)--> socketpair --> sd-bus reads
 *   client socket <--------------- sd-bus writes (a dup of the client socket) -------------------
 *
 * The relay passes the SASL lines on until the client's BEGIN, and nothing after it until sd-bus has
 * accepted the authentication, so both see the first message start at the same byte. From there it
 * reads each message's fixed header (16 bytes: endianness, type, flags, version, body length, serial,
 * header-fields array length) and refuses one whose declared size is above PEER_MESSAGE_SIZE_MAX before
 * passing on a byte of it; then it reads no further than that message's end, so the fds that come with
 * the next message are never mistaken for this one's. The fds of a message stay with the relay, charged
 * to the user, until its last byte and go to sd-bus with it. It never blocks: while the socketpair is
 * full (sd-bus is behind) it stops reading the client, whose own socket buffer then fills.
 *
 * A violation shuts the client's socket down and ends sd-bus's input: sd-bus then sees the connection
 * close and its owner frees everything (peer.c). The reason is logged. */

#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

/* The largest message a peer connection may send. The largest legitimate one is an Update with
 * BROKER_UPDATE_MAX (65536) unmaps and maps and BROKER_UPDATE_FDS_MAX (253) fds: a(tt) 65536 x 16 bytes,
 * ah 253 x 4, a(utttu) 65536 x 40 (36 bytes padded to the struct's 8-byte alignment): a body of
 * 3,671,044 bytes, and with the fixed header and the header fields (path, interface, member, signature,
 * unix_fds: about 150 bytes) 3,671,204 in all, 3.5 MiB (test-peer-limits.c sends it). Twice that,
 * rounded up to a power of two. */
#define PEER_MESSAGE_SIZE_MAX (UINT32_C(8) << 20)

/* What the unfinished messages of all of one user's peer connections may declare together, counting
 * messages above the relay's buffer (64 KiB: smaller ones cost 16 x 64 KiB at most): two messages at
 * the limit, four of the largest Updates. So sd-bus buffers at most this for one user, not
 * PEERS_PER_USER_MAX x PEER_MESSAGE_SIZE_MAX. Root is not limited. */
#define PEER_USER_BYTES_MAX (UINT64_C(16) << 20)

/* The fds one message may carry: the kernel's SCM_MAX_FD, which is also BROKER_UPDATE_FDS_MAX. */
#define PEER_MESSAGE_FDS_MAX 253

/* What the SASL exchange before BEGIN may take (a client sends about 60 bytes; sd-bus allows 64 KiB). */
#define PEER_AUTH_SIZE_MAX (UINT32_C(16) << 10)

/* Fds the daemon holds for one peer connection: the client's socket, its dup that sd-bus writes to, and
 * the socketpair that sd-bus reads from. */
#define PEER_CONNECTION_FDS 4

typedef struct PeerRelay PeerRelay;

/* The fds of a message still arriving are the user's: charge_fds returns < 0 to refuse them (the
 * connection then closes, with reason naming the limit); release_fds when they went on to sd-bus or
 * were closed. So is the declared size of a message above the relay's buffer, from its header until
 * its last byte (charge_bytes, release_bytes). */
typedef struct PeerRelayAccount {
        int (*charge_fds)(void *userdata, unsigned n, char *reason, size_t reason_size);
        void (*release_fds)(void *userdata, unsigned n);
        int (*charge_bytes)(void *userdata, uint64_t n, char *reason, size_t reason_size);
        void (*release_bytes)(void *userdata, uint64_t n);
} PeerRelayAccount;

/* Takes client_fd (the daemon's end of the client's socket) in any case. Returns the two fds for
 * sd_bus_set_fd(bus, *ret_bus_input, *ret_bus_output), which bus then owns. bus must outlive the relay:
 * its readiness tells when authentication ended. */
int peer_relay_new(sd_event *event, sd_bus *bus, int client_fd, const PeerRelayAccount *account, void *userdata,
                   const char *description, PeerRelay **ret, int *ret_bus_input, int *ret_bus_output);
PeerRelay *peer_relay_free(PeerRelay *r);
