/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the peer relay (peer-relay.c) reads of a client's bytes, without I/O: the SASL lines up to BEGIN
 * and the size a D-Bus message's fixed header declares. Pure, for the fuzz target. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* D-Bus specification, "Message Format": the fixed part of every header. */
#define PEER_FRAME_HEADER_SIZE 16

/* The SASL exchange read so far (D-Bus specification, "Authentication protocol": one NUL byte, then
 * lines ending in \r\n). Zero-initialized at the start of the stream. */
typedef struct PeerAuthScan {
        size_t seen;   /* bytes scanned so far */
        char line[8];  /* enough of the current line to tell BEGIN */
        size_t line_size;
        char previous;
} PeerAuthScan;

/* Scans p[0..n) and returns how many bytes belong to the SASL exchange: all n, or up to and including
 * the end of the BEGIN line, when *ret_begin is set. */
size_t peer_auth_scan(PeerAuthScan *s, const uint8_t *p, size_t n, bool *ret_begin);

/* The whole size of the message whose fixed header this is (16 + the header fields padded to 8 + the
 * body), or -EPROTO when it is no D-Bus message (endianness, protocol version). */
int peer_frame_size(const uint8_t header[PEER_FRAME_HEADER_SIZE], uint64_t *ret_size);
