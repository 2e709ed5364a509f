/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "peer-frame.h"

#define DBUS_LITTLE_ENDIAN 'l'
#define DBUS_BIG_ENDIAN 'B'
#define DBUS_PROTOCOL_VERSION 1

size_t peer_auth_scan(PeerAuthScan *s, const uint8_t *p, size_t n, bool *ret_begin) {
        size_t take;
        bool begin = false;

        for (take = 0; take < n && !begin; take++) {
                char c = (char) p[take];

                if (s->seen + take == 0)
                        continue; /* the leading NUL byte */
                if (c == '\n' && s->previous == '\r') {
                        begin = s->line_size == 6 && memcmp(s->line, "BEGIN\r", 6) == 0;
                        s->line_size = 0;
                } else {
                        if (s->line_size < sizeof(s->line))
                                s->line[s->line_size] = c;
                        s->line_size++;
                }
                s->previous = c;
        }
        s->seen += take;
        *ret_begin = begin;
        return take;
}

int peer_frame_size(const uint8_t header[PEER_FRAME_HEADER_SIZE], uint64_t *ret_size) {
        uint32_t body, fields;

        if ((header[0] != DBUS_LITTLE_ENDIAN && header[0] != DBUS_BIG_ENDIAN) || header[3] != DBUS_PROTOCOL_VERSION)
                return -EPROTO;
        memcpy(&body, header + 4, sizeof(body));
        memcpy(&fields, header + 12, sizeof(fields));
        body = header[0] == DBUS_LITTLE_ENDIAN ? le32toh(body) : be32toh(body);
        fields = header[0] == DBUS_LITTLE_ENDIAN ? le32toh(fields) : be32toh(fields);
        *ret_size = PEER_FRAME_HEADER_SIZE + (((uint64_t) fields + 7) & ~UINT64_C(7)) + body;
        return 0;
}
