/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* In the VM, under tests/vm/fdstore-supervisor (the fd store): the daemon is killed with SIGKILL, then
 * stopped with SIGTERM, and restarted each time while an edu device keeps its mapping. DMA must still
 * land in the VMM's memfd through the restored mapping, Unmap must still block it, new mappings must
 * work, and after Close the kernel's pin count is back where it started. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "edu.h"
#include "vm-client.h"
#include "macro.h"

#define tap vm_tap
#define fill vm_fill
#define check vm_check
#define zero vm_zero

#define BUS_NAME "org.vfiobroker.Broker1"
#define CONTAINER BUS_NAME ".Container"
#define MiB (UINT64_C(1) << 20)



static bool dma_round_trip(Edu *edu, int ram, uint64_t iova_base, uint64_t from, uint64_t to, uint8_t seed) {
        fill(ram, from, seed, 1024);
        return edu_dma_to_device(edu, iova_base + from, 0, 1024) == 0 &&
               edu_dma_from_device(edu, 0, iova_base + to, 1024) == 0 && check(ram, to, seed, 1024);
}

int main(int argc, char *argv[]) {
        sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *path = NULL;
        const char *p, *how[] = { "kill9", "term" };
        unsigned group;
        const char *device;
        long baseline;
        int ram, dev, fd;
        Edu edu;

        if (argc != 3)
                return 2;
        group = (unsigned) atoi(argv[1]);
        device = argv[2];
        baseline = vm_pinned_pages();
        tap(baseline >= 0, "restart: the kernel reports FOLL_PIN counts (baseline %ld)", baseline);

        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 16 * MiB) < 0 || sd_bus_open_system(&bus) < 0)
                return 1;
        if (vm_call(bus, "/org/vfiobroker/Broker1", BUS_NAME ".Manager", "CreateContainer", &reply, "a{sv}", 1, "Label", "s", "restart-vm") ||
            sd_bus_message_read(reply, "o", &p) < 0 || !(path = strdup(p)))
                return 1;
        reply = sd_bus_message_unref(reply);
        bool ok = !vm_call(bus, path, CONTAINER, "AttachGroup", NULL, "u", group) &&
                  !vm_call(bus, path, CONTAINER, "Map", NULL, "htttu", ram, UINT64_C(0), 8 * MiB, 1 * MiB, UINT32_C(3)) &&
                  !vm_call(bus, path, CONTAINER, "OpenDevice", &reply, "s", device) && sd_bus_message_read(reply, "h", &fd) >= 0;
        dev = ok ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
        reply = sd_bus_message_unref(reply);
        ok = ok && dev >= 0 && edu_open(&edu, dev) == 0 && dma_round_trip(&edu, ram, 1 * MiB, 0x1000, 0x10000, 0x21);
        tap(ok, "restart: a VMM with 8 MiB mapped DMAs through the broker");
        tap(vm_pinned_pages() - baseline >= 2000, "restart: 8 MiB are pinned (%ld pages)", vm_pinned_pages() - baseline);

        /* Hotpluggable memory with one granule given back, and dirty tracking for a migration. */
        int bitmap = memfd_create("bitmap", MFD_CLOEXEC);
        ok = bitmap >= 0 && ftruncate(bitmap, 4096) == 0 &&
             !vm_call(bus, path, CONTAINER, "MapDiscardable", NULL, "htttutb", ram, 12 * MiB, 4 * MiB, 64 * MiB,
                      UINT32_C(3), 2 * MiB, 1) &&
             !vm_call(bus, path, CONTAINER, "Discard", NULL, "tt", 66 * MiB, 2 * MiB) &&
             !vm_call(bus, path, CONTAINER, "StartDirtyTracking", NULL, NULL);
        tap(ok, "restart: a discardable region with one granule discarded, and dirty tracking started");

        for (size_t i = 0; i < 2; i++) {
                char a[256], b[256];
                snprintf(a, sizeof(a), "%s", vm_harness(how[i]));
                snprintf(b, sizeof(b), "%s", vm_harness("start"));
                tap(strncmp(b, "started", 7) == 0, "restart: %s (%s), then a new instance (%s)", how[i], a, b);
                uint32_t n = 0;
                ok = sd_bus_get_property_trivial(bus, BUS_NAME, path, CONTAINER, "Mappings", NULL, 'u', &n) >= 0 && n == 2;
                tap(ok, "restart after %s: the container is back with its mapping and its populated granule", how[i]);
                int tracking = 0;
                uint64_t dirty = 0;
                ok = sd_bus_get_property_trivial(bus, BUS_NAME, path, CONTAINER, "DirtyTracking", NULL, 'b', &tracking) >= 0 &&
                     tracking && !vm_call(bus, path, CONTAINER, "GetDirtyBitmap", &reply, "tttht", 1 * MiB, 8 * MiB,
                                          UINT64_C(4096), bitmap, UINT64_C(0)) &&
                     sd_bus_message_read(reply, "t", &dirty) > 0;
                reply = sd_bus_message_unref(reply);
                tap(ok && dirty == 2048, "restart after %s: dirty tracking is still on in the kernel (%" PRIu64 " dirty pages)",
                    how[i], dirty);
                tap(dma_round_trip(&edu, ram, 1 * MiB, 0x2000 + i * 0x1000, 0x20000 + i * 0x1000, (uint8_t) (0x40 + i)),
                    "restart after %s: the device still DMAs into the memfd through the restored mapping", how[i]);
                tap(vm_pinned_pages() - baseline >= 2000, "restart after %s: the pages stayed pinned", how[i]);
        }

        /* The region's memory came back with it: the discarded granule can be populated and reached. */
        ok = !vm_call(bus, path, CONTAINER, "Populate", NULL, "tt", 66 * MiB, 2 * MiB) &&
             dma_round_trip(&edu, ram, 1 * MiB, 0x5000, 0, 0x66) &&
             edu_dma_from_device(&edu, 0, 66 * MiB + 0x1000, 1024) == 0 && check(ram, 14 * MiB + 0x1000, 0x66, 1024);
        tap(ok, "restart: Populate after the restarts, and the device reaches the granule");
        tap(!vm_call(bus, path, CONTAINER, "Unmap", NULL, "tt", 64 * MiB, 4 * MiB), "restart: Unmap of the region");
        close(bitmap);

        /* Unmap still blocks; a new mapping works. */
        fill(ram, 0x3000, 0x77, 1024);
        ok = edu_dma_to_device(&edu, 1 * MiB + 0x3000, 0, 1024) == 0;
        tap(!vm_call(bus, path, CONTAINER, "Unmap", NULL, "tt", 1 * MiB, 8 * MiB), "restart: Unmap after the restarts");
        ok = ok && edu_dma_from_device(&edu, 0, 1 * MiB + 0x40000, 1024) == 0;
        tap(ok && zero(ram, 0x40000, 1024), "restart: after Unmap the device's write does not land");
        tap(!vm_call(bus, path, CONTAINER, "Map", NULL, "htttu", ram, 8 * MiB, 4 * MiB, 32 * MiB, UINT32_C(3)) &&
            dma_round_trip(&edu, ram, 32 * MiB - 8 * MiB, 8 * MiB + 0x1000, 8 * MiB + 0x8000, 0x55),
            "restart: a new mapping works after the restarts");

        close(dev);
        tap(!vm_call(bus, path, CONTAINER, "Close", NULL, ""), "restart: Close");
        long left = -1;
        for (int i = 0; i < 50 && (left = vm_pinned_pages() - baseline) > 0; i++)
                usleep(100000);
        /* System-wide counters: others may release pins of their own meanwhile, so at or below. */
        tap(left <= 0, "restart: nothing stays pinned after Close (%ld pages above the baseline)", left);
        sd_bus_flush_close_unref(bus);
        return vm_failures ? 1 : 0;
}
