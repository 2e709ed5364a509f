/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libFuzzer target: the request-validation layer. Arbitrary sequences of Map/Unmap/Attach/Detach/
 * Update, discardable regions (MapDiscardable/Discard/Populate), dirty tracking and hot reset with
 * arbitrary numbers go through container*.c (the checks every D-Bus call reaches) on the sim backend.
 * Afterwards the broker's view and the simulated kernel's must agree: every byte the container says
 * is mapped is pinned, and nothing else; a refused request changed nothing. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend-sim.h"
#include "broker.h"
#include "container.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t take(const uint8_t **data, size_t *size, size_t n) {
        uint64_t v = 0;
        for (size_t i = 0; i < n && *size > 0; i++, (*data)++, (*size)--)
                v |= (uint64_t) **data << (8 * i);
        return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        BrokerConfig *config = NULL;
        Backend *backend = NULL;
        Broker *broker = NULL;
        Container *c = NULL;
        int memfd, bitmap;

        if (broker_config_new_default(&config) < 0 || backend_sim_new(config, &backend, NULL) < 0 ||
            broker_new(NULL, backend, config, &broker) < 0 || broker_refresh_groups(broker) < 0 ||
            container_new(broker, ":1.1", 1000, "fuzz", &c, NULL) < 0)
                abort();

        memfd = memfd_create("fuzz", MFD_CLOEXEC);
        bitmap = memfd_create("bitmap", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, 64 << 20) < 0 || bitmap < 0 || ftruncate(bitmap, 1 << 20) < 0)
                abort();

        while (size > 0) {
                uint8_t op = (uint8_t) take(&data, &size, 1);
                BrokerError e = BROKER_ERROR_INIT;
                size_t before_n = container_n_mappings(c);
                uint64_t before_bytes = container_mapped_bytes(c);
                int r;

                /* Small numbers are interesting (alignment, overlap); so are huge ones (overflow). */
                uint64_t scale = op & 0x80 ? 1 : 4096;
                uint64_t a = take(&data, &size, op & 0x40 ? 8 : 2) * scale;
                uint64_t b = take(&data, &size, op & 0x40 ? 8 : 2) * scale;
                uint64_t d = take(&data, &size, op & 0x40 ? 8 : 2) * scale;

                switch (op & 0x7) {
                case 0:
                case 1:
                        r = container_map(c, memfd, a, b, d, (uint32_t) (op >> 3) & 0x7, &e);
                        break;
                case 2:
                        r = container_map(c, memfd, a & ((64 << 20) - 1), b & ((16 << 20) - 1), d, 3, &e);
                        break;
                case 3:
                        r = container_unmap(c, a, b, &e);
                        break;
                case 4:
                        r = container_attach_group(c, (unsigned) (a % 8), &e);
                        break;
                case 5:
                        r = container_detach_group(c, (unsigned) (a % 8), &e);
                        break;
                case 6: {
                        /* A batch: one unmap, then two maps, all or nothing. */
                        UpdateUnmap u = { a, b & ((16 << 20) - 1) };
                        UpdateMap m[2] = {
                                { 0, b & ((64 << 20) - 1), (d & 0xf) * 4096, d, 3 },
                                { (uint32_t) (op >> 6), 0, 4096 * (1 + (a & 3)), d + 0x100000, (uint32_t) (op >> 3) & 3 },
                        };
                        r = container_update(c, op & 0x8 ? &u : NULL, op & 0x8 ? 1 : 0, &memfd, 1, m, 2, &e);
                        break;
                }
                default:
                        switch ((op >> 3) & 0x7) {
                        case 0:
                                r = container_map(c, -1, a, b, d, 3, &e);
                                break;
                        case 1:
                                r = container_map_discardable(c, memfd, a & ((64 << 20) - 1), b & ((32 << 20) - 1), d,
                                                              3, UINT64_C(4096) << ((b >> 12) & 0x7), a & 1, &e);
                                break;
                        case 2:
                                r = container_discard(c, a, b, &e);
                                break;
                        case 3:
                                r = container_populate(c, a, b, &e);
                                break;
                        case 4:
                                r = container_set_dirty_tracking(c, a & 1, &e);
                                break;
                        case 5:
                                r = container_dirty_bitmap(c, a, b, 4096, bitmap, d & 0xfff8, NULL, &e);
                                break;
                        case 6:
                                r = container_unmap_dirty(c, a, b, 4096, bitmap, 0, NULL, &e);
                                break;
                        default:
                                r = container_hot_reset(c, a & 1 ? "0000:00:05.0" : "0000:00:01.0", &e);
                                break;
                        }
                        break;
                }
                if (r < 0) {
                        /* Refused: with a SPEC error and a message, and nothing changed. */
                        if (e.code == BROKER_ERROR_NONE || e.message[0] == 0)
                                abort();
                        if (container_n_mappings(c) != before_n || container_mapped_bytes(c) != before_bytes)
                                abort();
                }
                if (container_mapped_bytes(c) != backend_sim_pinned_bytes(broker->backend))
                        abort();
        }

        container_close(c);
        if (backend_sim_pinned_bytes(broker->backend) != 0)
                abort();
        close(memfd);
        close(bitmap);
        broker_free(broker);
        return 0;
}
