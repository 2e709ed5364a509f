/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* In the VM, under tests/vm/fdstore-supervisor (the fd store): an edu served over vfio-user keeps its
 * session while the daemon is killed (SIGKILL) and stopped (SIGTERM without a stop job) and started
 * again each time ($VFIO_USER_RESTARTS: the harness commands, "kill9 term" unless set). Between the restarts the client only talks protocol on the same connection: the
 * device was neither reset nor disabled (bus mastering stays on, which vfio-pci clears when the last
 * device fd closes), the INTx eventfd it passed before still fires without a new SET_IRQS, the BAR0
 * mmap it holds still reads the device, DMA lands in its memfd through the real IOMMU, its pages stay
 * pinned once, and after it leaves and the container closes nothing stays pinned. Prints "VMTAP:". */

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "vfio-user-client.h"
#include "vm-client.h"

#define BUS_NAME "org.vfiobroker.Broker1"
#define CONTAINER BUS_NAME ".Container"
#define MiB (UINT64_C(1) << 20)
#define IOVA UINT64_C(0x100000)
#define EDU_BUF UINT64_C(0x40000)
#define SOCK "/tmp/vfio-user-restart.sock"





static bool round_trip(int fd, int ram, uint64_t from, uint64_t to, uint8_t seed) {
        vm_fill(ram, from, seed, 512);
        return vu_edu_dma(fd, IOVA + from, EDU_BUF, 512, 0) == 0 && vu_edu_dma(fd, EDU_BUF, IOVA + to, 512, 2) == 0 &&
               vm_check(ram, to, seed, 512);
}

static bool interrupt_fires(int fd, int efd) {
        struct pollfd p = { efd, POLLIN, 0 };
        uint64_t ticks = 0;
        bool fired = vu_bar0_write32(fd, 0x60, 1) == 0 && poll(&p, 1, 3000) == 1 &&
                     read(efd, &ticks, sizeof(ticks)) == sizeof(ticks);

        (void) vu_bar0_write32(fd, 0x64, 1); /* acknowledge */
        /* INTx is automasked once signalled (VFIO_IRQ_INFO_AUTOMASKED): unmask for the next one. */
        VfioUserIrqSet unmask = { sizeof(unmask), VFIO_USER_IRQ_SET_DATA_NONE | VFIO_USER_IRQ_SET_ACTION_UNMASK,
                                  VFIO_USER_PCI_INTX_IRQ_INDEX, 0, 1 };
        (void) vu_call(fd, VFIO_USER_DEVICE_SET_IRQS, &unmask, sizeof(unmask), NULL, 0, NULL, 0, NULL, NULL);
        return fired;
}

static uint32_t mappings(sd_bus *bus, const char *path) {
        uint32_t n = UINT32_MAX;
        (void) sd_bus_get_property_trivial(bus, BUS_NAME, path, CONTAINER, "Mappings", NULL, 'u', &n);
        return n;
}

int main(int argc, char *argv[]) {
        sd_bus *bus = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int listener = -EBADF, fd = -EBADF, ram = -EBADF, bar_fd = -EBADF, efd = -EBADF;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        /* The harness's ways to restart; the system VM adds systemd's own restart. */
        const char *env = getenv("VFIO_USER_RESTARTS");
        char restarts[128], *how[8], *save = NULL;
        size_t n_how = 0;
        uint32_t *bar = MAP_FAILED;
        unsigned group;
        const char *device;
        long baseline;
        size_t size = 0;
        int r;

        if (argc != 3)
                return 2;
        group = (unsigned) atoi(argv[1]);
        device = argv[2];
        baseline = vm_pinned_pages();
        if (sd_bus_open_system(&bus) < 0 || !(path = vm_create_container(bus, "vfio-user-restart")) ||
            vm_call(bus, path, CONTAINER, "AttachGroup", NULL, "u", group)) {
                vm_tap(false, "vfio-user restart: a container with an edu group");
                return 1;
        }
        listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", SOCK);
        (void) unlink(SOCK);
        if (listener < 0 || bind(listener, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(listener, 4) < 0 ||
            vm_call(bus, path, CONTAINER, "ServeVfioUser", NULL, "sh", device, listener)) {
                vm_tap(false, "vfio-user restart: serve %s", device);
                return 1;
        }

        /* A client as QEMU sets it up: the BAR mmap'ed, bus mastering on, RAM mapped, INTx on an eventfd. */
        fd = vu_connect_path(SOCK);
        if (fd < 0 || vu_negotiate(fd) != 0) {
                vm_tap(false, "vfio-user restart: connect and negotiate");
                return 1;
        }
        {
                uint8_t buf[256] = {};
                VfioUserRegionInfo q = { sizeof(buf), 0, VFIO_USER_PCI_BAR0_REGION_INDEX }, full;
                r = vu_call(fd, VFIO_USER_DEVICE_GET_REGION_INFO, &q, sizeof(q), NULL, 0, buf, sizeof(buf), &size,
                            &bar_fd);
                memcpy(&full, buf, sizeof(full));
                if (r == 0 && bar_fd >= 0)
                        bar = mmap(NULL, MiB, PROT_READ | PROT_WRITE, MAP_SHARED, bar_fd, (off_t) full.offset);
        }
        uint16_t cmd = 0;
        r = vu_region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 4, &cmd, 2);
        cmd |= 0x6;
        r = r ?: vu_region_write(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 4, &cmd, 2);
        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 4 * MiB) < 0)
                return 1;
        r = r ?: vu_dma_map(fd, ram, 0, IOVA, 4 * MiB, 3);
        efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        VfioUserIrqSet set = { sizeof(set), VFIO_USER_IRQ_SET_DATA_EVENTFD | VFIO_USER_IRQ_SET_ACTION_TRIGGER,
                               VFIO_USER_PCI_INTX_IRQ_INDEX, 0, 1 };
        r = r ?: vu_call(fd, VFIO_USER_DEVICE_SET_IRQS, &set, sizeof(set), &efd, 1, NULL, 0, NULL, NULL);
        vm_tap(r == 0 && bar != MAP_FAILED && bar[0] == 0x010000ed && round_trip(fd, ram, 0x1000, 0x10000, 0x31) &&
               interrupt_fires(fd, efd),
               "vfio-user restart: a client with BAR0 mmap'ed, 4 MiB mapped and INTx on an eventfd DMAs");
        /* /proc/vmstat folds per-CPU counters past a threshold: the count is approximate, so 4 MiB (1024
         * pages) count as pinned from 768 on, and "once" is within 128 pages of it. */
        long pinned = vm_pinned_pages() - baseline;
        vm_tap(pinned >= 768, "vfio-user restart: 4 MiB are pinned (%ld pages)", pinned);

        snprintf(restarts, sizeof(restarts), "%s", env ?: "kill9 term");
        for (char *w = strtok_r(restarts, " ", &save); w && n_how < 8; w = strtok_r(NULL, " ", &save))
                how[n_how++] = w;
        for (size_t i = 0; i < n_how; i++) {
                char a[256], b[256];
                uint16_t after = 0;
                uint32_t ident = 0;

                snprintf(a, sizeof(a), "%s", vm_harness(how[i]));
                snprintf(b, sizeof(b), "%s", vm_harness("start"));
                vm_tap(strncmp(b, "started", 7) == 0, "vfio-user restart: %s (%s), then a new instance (%s)", how[i],
                       a, b);
                r = vu_region_read(fd, VFIO_USER_PCI_BAR0_REGION_INDEX, 0, &ident, 4);
                vm_tap(r == 0 && ident == 0x010000ed,
                       "vfio-user restart after %s: the same connection goes on (REGION_READ %d)", how[i], r);
                r = vu_region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 4, &after, 2);
                vm_tap(r == 0 && (after & 0x6) == 0x6,
                       "vfio-user restart after %s: the device was not disabled (command 0x%04x)", how[i], after);
                vm_tap(bar[0] == 0x010000ed, "vfio-user restart after %s: the BAR0 mmap still reads the device",
                       how[i]);
                vm_tap(round_trip(fd, ram, 0x2000 + i * 0x1000, 0x20000 + i * 0x1000, (uint8_t) (0x40 + i)),
                       "vfio-user restart after %s: DMA lands in the client's memfd through the IOMMU", how[i]);
                vm_tap(interrupt_fires(fd, efd),
                       "vfio-user restart after %s: INTx fires the eventfd set before the restart", how[i]);
                long now = vm_pinned_pages() - baseline;
                vm_tap(mappings(bus, path) == 1 && now >= 768 && now <= pinned + 128,
                       "vfio-user restart after %s: one mapping, pinned once (%ld pages, were %ld)", how[i], now,
                       pinned);
        }

        r = vu_dma_unmap(fd, IOVA, 4 * MiB, 0);
        vm_tap(r == 0 && mappings(bus, path) == 0, "vfio-user restart: DMA_UNMAP of the mapping made before");
        munmap(bar, MiB);
        fd = safe_close(fd);
        vm_tap(!vm_call(bus, path, CONTAINER, "StopVfioUser", NULL, "s", device) &&
               !vm_call(bus, path, CONTAINER, "Close", NULL, ""), "vfio-user restart: StopVfioUser and Close");
        /* As approximate as above: the client's 4 MiB staying pinned would be 1024 pages, the counters'
         * lag is a few dozen. */
        long left = -1;
        for (int i = 0; i < 50 && (left = vm_pinned_pages() - baseline) > 0; i++)
                usleep(100000);
        vm_tap(left < 128, "vfio-user restart: nothing stays pinned (%ld pages above the baseline)", left);
        (void) unlink(SOCK);
        sd_bus_flush_close_unref(bus);
        return vm_failures ? 1 : 0;
}
