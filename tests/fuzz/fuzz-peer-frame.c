/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libFuzzer target: what the peer relay (peer-relay.c) reads of a client's bytes before sd-bus sees
 * any of them (peer-frame.c). The input is the client's stream cut into reads at arbitrary points: the
 * SASL lines up to BEGIN, then D-Bus messages framed by their fixed headers. Whatever the bytes and
 * however they are cut, the scanner never takes more than it was given, finds BEGIN only at a line's
 * end, and a declared message size is always at least its fixed header and never wraps. */

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "peer-frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        PeerAuthScan scan = {};
        size_t at = 0;
        bool begin = false;

        /* The first byte chooses how the SASL part is cut into reads (1 to 256 bytes each). */
        size_t chunk = size > 0 ? (size_t) data[0] + 1 : 1;
        if (size > 0)
                data++, size--;

        while (at < size && !begin) {
                size_t n = size - at < chunk ? size - at : chunk;
                size_t take = peer_auth_scan(&scan, data + at, n, &begin);

                assert(take <= n);
                assert(begin || take == n);
                if (begin)
                        assert(at + take >= 2 && data[at + take - 1] == '\n' && data[at + take - 2] == '\r');
                at += take;
                assert(scan.seen == at);
        }

        /* What follows BEGIN: messages, each skipped by the size its header declares. */
        while (begin && size - at >= PEER_FRAME_HEADER_SIZE) {
                uint64_t frame;

                if (peer_frame_size(data + at, &frame) < 0)
                        break;
                assert(frame >= PEER_FRAME_HEADER_SIZE);
                assert(frame <= PEER_FRAME_HEADER_SIZE + ((UINT64_C(1) << 32) + 7) + UINT32_MAX);
                if (frame > size - at)
                        break;
                at += (size_t) frame;
        }
        return 0;
}
