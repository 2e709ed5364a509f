/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Runs in the test VM against vfio-brokerd --backend=vfio: what a VMM needs the group and container
 * fds for, done by the broker on the real kernel and proven with edu DMA.
 *  - PCI hot reset: an edu behind a PCIe root port (its slot can be reset) and one on the root bus
 *    (it cannot: NotSupported);
 *  - dirty tracking: the kernel's bitmap, in the caller's memfd, over mappings with a hole between
 *    them, after the device wrote into them; unmap with bitmap, after which DMA is blocked;
 *  - coordinated discard: a discarded granule is unpinned and unreachable for the device (DMAR
 *    fault, no bytes land), populated again after the VMM punched a hole in its memfd, it is reached
 *    again.
 * Prints "VMTAP: ok|not ok - name" lines. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "edu.h"
#include "macro.h"
#include "vm-client.h"

#define tap vm_tap
#define call(...) vm_call(bus, __VA_ARGS__)

#define BUS_NAME "org.vfiobroker.Broker1"
#define CONTAINER BUS_NAME ".Container"
#define MiB (UINT64_C(1) << 20)
#define PAGE UINT64_C(4096)

static sd_bus *bus;

static bool error_is(const char *e, const char *name) {
        return e && strncmp(e, name, strlen(name)) == 0;
}

/* Device to RAM: the edu buffer (filled from RAM at src first) written to IOVA dst. */
static bool dma_write(Edu *edu, int ram, uint64_t src_iova, uint64_t src_off, uint64_t dst_iova, uint8_t seed) {
        vm_fill(ram, src_off, seed, 512);
        return edu_dma_to_device(edu, src_iova, 0, 512) == 0 && edu_dma_from_device(edu, 0, dst_iova, 512) == 0;
}

static void test_hot_reset(const unsigned *ids, char devices[][32], int n) {
        _cleanup_free_ char *path = vm_create_container(bus, "hot-reset");
        int root = -1, port = -1;
        const char *e;

        for (int i = 0; i < n; i++) {
                if (strncmp(devices[i], "0000:00:", 8) == 0 && root < 0)
                        root = i;
                else if (strncmp(devices[i], "0000:00:", 8) != 0 && port < 0)
                        port = i;
        }
        tap(path && root >= 0 && port >= 0, "hot-reset: an edu on the root bus (%s) and one behind a root port (%s)",
            root >= 0 ? devices[root] : "-", port >= 0 ? devices[port] : "-");
        if (!path || root < 0 || port < 0)
                return;

        tap(!call(path, CONTAINER, "AttachGroup", NULL, "u", ids[root]) &&
            !call(path, CONTAINER, "AttachGroup", NULL, "u", ids[port]), "hot-reset: both groups attached");

        e = call(path, CONTAINER, "HotReset", NULL, "s", devices[root]);
        tap(error_is(e, "org.freedesktop.DBus.Error.NotSupported"),
            "hot-reset: the root-bus edu has no slot or bus reset: NotSupported (%s)", e ?: "no error");

        /* The kernel demands the fd of every group the reset touches and refuses otherwise (EINVAL):
         * success shows the broker lent exactly those. Then the device works as before. */
        _cleanup_close_ int ram = memfd_create("ram", MFD_CLOEXEC);
        _cleanup_close_ int dev = vm_open_device(bus, path, devices[port]);
        Edu edu;
        bool ok = ram >= 0 && ftruncate(ram, 4 * MiB) == 0 &&
                  !call(path, CONTAINER, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, 4 * MiB, UINT32_C(3)) &&
                  dev >= 0 && edu_open(&edu, dev) == 0 && dma_write(&edu, ram, 4 * MiB, 0, 4 * MiB + 0x10000, 0x31) &&
                  vm_check(ram, 0x10000, 0x31, 512);
        tap(ok, "hot-reset: edu %s DMAs before the reset", devices[port]);
        e = call(path, CONTAINER, "HotReset", NULL, "s", devices[port]);
        tap(!e, "hot-reset: VFIO_DEVICE_PCI_HOT_RESET of %s with the group fds the broker holds (%s)", devices[port],
            e ?: "ok");
        ok = edu_open(&edu, dev) == 0 && dma_write(&edu, ram, 4 * MiB + 0x1000, 0x1000, 4 * MiB + 0x20000, 0x32) &&
             vm_check(ram, 0x20000, 0x32, 512);
        tap(ok, "hot-reset: the device DMAs again after the reset, through the same mappings");

        safe_close(dev);
        dev = -1;
        (void) call(path, CONTAINER, "Close", NULL, NULL);
}

static void zero_fill(int fd, uint64_t offset, size_t n) {
        static const uint8_t zeros[4096];
        if (pwrite(fd, zeros, n, (off_t) offset) != (ssize_t) n)
                abort();
}

static bool bitmap_words(int fd, uint64_t offset, uint64_t *w, size_t n) {
        return pread(fd, w, n * 8, (off_t) offset) == (ssize_t) (n * 8);
}

static void test_dirty(unsigned id, const char *device) {
        _cleanup_free_ char *path = vm_create_container(bus, "dirty");
        _cleanup_close_ int ram = memfd_create("ram", MFD_CLOEXEC), bitmap = memfd_create("bitmap", MFD_CLOEXEC);
        _cleanup_close_ int dev = -1;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t dirty = 0, w[12];
        Edu edu;
        const char *e;

        bool ok = path && ram >= 0 && bitmap >= 0 && ftruncate(ram, 4 * MiB) == 0 && ftruncate(bitmap, PAGE) == 0 &&
                  !call(path, CONTAINER, "AttachGroup", NULL, "u", id) &&
                  !call(path, CONTAINER, "Map", NULL, "htttu", ram, UINT64_C(0), MiB, 16 * MiB, UINT32_C(3)) &&
                  !call(path, CONTAINER, "Map", NULL, "htttu", ram, 2 * MiB, MiB, 18 * MiB, UINT32_C(3));
        tap(ok, "dirty: two 1 MiB mappings with a 1 MiB hole between them");
        if (!ok)
                return;

        e = call(path, CONTAINER, "StartDirtyTracking", NULL, NULL);
        tap(!e, "dirty: VFIO_IOMMU_DIRTY_PAGES START on the real kernel");
        dev = vm_open_device(bus, path, device);
        ok = dev >= 0 && edu_open(&edu, dev) == 0 && dma_write(&edu, ram, 16 * MiB, 0, 18 * MiB + 0x5000, 0x44) &&
             vm_check(ram, 2 * MiB + 0x5000, 0x44, 512);
        tap(ok, "dirty: the edu writes into the second mapping while tracking");

        /* 768 pages: 256 mapped, 256 not, 256 mapped; vfio-pci devices do not report their own
         * writes, so type1 reports every pinned page. */
        e = call(path, CONTAINER, "GetDirtyBitmap", &reply, "ttt" "ht", 16 * MiB, 3 * MiB, PAGE, bitmap, UINT64_C(64));
        ok = !e && sd_bus_message_read(reply, "t", &dirty) > 0 && bitmap_words(bitmap, 64, w, 12);
        bool layout = ok;
        for (int i = 0; layout && i < 12; i++)
                layout = w[i] == (i < 4 || i >= 8 ? UINT64_MAX : 0);
        tap(ok && dirty == 512 && layout,
            "dirty: the kernel's bitmap lands in the caller's memfd: %" PRIu64 " dirty pages, ones over both "
            "mappings and zeros over the hole (%s)", dirty, e ?: "ok");

        e = call(path, CONTAINER, "GetDirtyBitmap", NULL, "tttht", 16 * MiB + PAGE, MiB, PAGE, bitmap, UINT64_C(0));
        tap(error_is(e, BUS_NAME ".Error.WouldSplit"), "dirty: a range that cuts a mapping is WouldSplit (%s)",
            e ?: "no error");

        reply = sd_bus_message_unref(reply);
        unsigned faults = vm_dmar_faults();
        e = call(path, CONTAINER, "UnmapWithDirtyBitmap", &reply, "tttht", 18 * MiB, MiB, PAGE, bitmap, UINT64_C(0));
        ok = !e && sd_bus_message_read(reply, "t", &dirty) > 0 && bitmap_words(bitmap, 0, w, 4) &&
             w[0] == UINT64_MAX && w[3] == UINT64_MAX;
        tap(ok && dirty == 256, "dirty: unmap with bitmap reports the 256 pages of the mapping it removed (%s)",
            e ?: "ok");
        zero_fill(ram, 2 * MiB + 0x8000, 512);
        (void) dma_write(&edu, ram, 16 * MiB, 0, 18 * MiB + 0x8000, 0x45);
        usleep(200 * 1000);
        tap(vm_zero(ram, 2 * MiB + 0x8000, 512) && vm_dmar_faults() > faults,
            "dirty: after the unmap the device cannot write there (DMAR faults %u -> %u)", faults, vm_dmar_faults());

        tap(!call(path, CONTAINER, "StopDirtyTracking", NULL, NULL), "dirty: VFIO_IOMMU_DIRTY_PAGES STOP");
        safe_close(dev);
        dev = -1;
        (void) call(path, CONTAINER, "Close", NULL, NULL);
}

static void test_discard(unsigned id, const char *device) {
        _cleanup_free_ char *path = vm_create_container(bus, "discard");
        _cleanup_close_ int ram = memfd_create("ram", MFD_CLOEXEC), dev = -1;
        Edu edu;
        const char *e;

        bool ok = path && ram >= 0 && ftruncate(ram, 16 * MiB) == 0 &&
                  !call(path, CONTAINER, "AttachGroup", NULL, "u", id);
        /* Pages are pinned at map time: touch them first so that locked memory reflects the mapping. */
        for (uint64_t off = 0; ok && off < 16 * MiB; off += PAGE)
                vm_fill(ram, off, 1, 1);
        long before = vm_daemon_locked_kib();
        /* 8 MiB of "virtio-mem" at IOVA 32 MiB (memfd offset 8 MiB), 2 MiB granules, plugged. */
        e = ok ? call(path, CONTAINER, "MapDiscardable", NULL, "htttutb", ram, 8 * MiB, 8 * MiB, 32 * MiB,
                      UINT32_C(3), 2 * MiB, 1) : "setup failed";
        long populated = vm_daemon_locked_kib();
        tap(!e && populated - before == 8 * 1024, "discard: MapDiscardable pins 8 MiB as 4 granules (locked %ld -> %ld KiB; %s)",
            before, populated, e ?: "ok");
        if (e)
                return;

        dev = vm_open_device(bus, path, device);
        ok = dev >= 0 && edu_open(&edu, dev) == 0 && dma_write(&edu, ram, 32 * MiB, 8 * MiB, 34 * MiB + 0x1000, 0x51) &&
             vm_check(ram, 10 * MiB + 0x1000, 0x51, 512);
        tap(ok, "discard: the edu writes into the second granule");

        e = call(path, CONTAINER, "Discard", NULL, "tt", 34 * MiB, 2 * MiB);
        long discarded = vm_daemon_locked_kib();
        tap(!e && populated - discarded == 2 * 1024, "discard: Discard unpins the granule (locked %ld -> %ld KiB; %s)",
            populated, discarded, e ?: "ok");

        unsigned faults = vm_dmar_faults();
        zero_fill(ram, 10 * MiB + 0x2000, 512);
        (void) dma_write(&edu, ram, 32 * MiB, 8 * MiB, 34 * MiB + 0x2000, 0x52);
        usleep(200 * 1000);
        tap(vm_zero(ram, 10 * MiB + 0x2000, 512) && vm_dmar_faults() > faults,
            "discard: a DMA into the discarded granule is blocked (no bytes; DMAR faults %u -> %u)", faults,
            vm_dmar_faults());
        ok = dma_write(&edu, ram, 32 * MiB, 8 * MiB, 36 * MiB + 0x3000, 0x53) && vm_check(ram, 12 * MiB + 0x3000, 0x53, 512);
        tap(ok, "discard: the granules around it still work");

        /* The VMM frees the memory, as a balloon inflate or virtio-mem unplug does, then plugs it back. */
        ok = fallocate(ram, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) (10 * MiB), (off_t) (2 * MiB)) == 0;
        e = call(path, CONTAINER, "Populate", NULL, "tt", 34 * MiB, 2 * MiB);
        ok = ok && !e && dma_write(&edu, ram, 32 * MiB, 8 * MiB, 34 * MiB + 0x4000, 0x54) &&
             vm_check(ram, 10 * MiB + 0x4000, 0x54, 512);
        tap(ok, "discard: after a hole punch and Populate the device reaches the new pages of the memfd (%s)",
            e ?: "ok");

        e = call(path, CONTAINER, "Unmap", NULL, "tt", 32 * MiB, 8 * MiB);
        tap(!e && vm_daemon_locked_kib() == before, "discard: Unmap of the whole region unpins it all (locked %ld KiB)",
            vm_daemon_locked_kib());
        safe_close(dev);
        dev = -1;
        (void) call(path, CONTAINER, "Close", NULL, NULL);
}

int main(void) {
        unsigned ids[8];
        char devices[8][32];
        int n;

        if (sd_bus_open_system(&bus) < 0) {
                tap(false, "features: connect to the system bus");
                return 1;
        }
        n = vm_find_groups(ids, devices, 8);
        tap(n >= 3, "features: three edu groups (%d found)", n);
        if (n < 3)
                return 1;

        test_hot_reset(ids, devices, n);
        test_dirty(ids[0], devices[0]);
        test_discard(ids[1], devices[1]);

        sd_bus_flush_close_unref(bus);
        return vm_failures > 0;
}
