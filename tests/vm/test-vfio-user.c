/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Runs in the test VM against vfio-brokerd --backend=vfio: an edu device served over vfio-user, driven
 * only through protocol messages (and the BAR mmap the broker offers), as an unmodified VMM would. The
 * edu DMAs into the client's memfd through the real IOMMU, an IOVA the client unmapped faults (DMAR),
 * the INTx eventfd fires, and the client's exit leaves nothing mapped. Prints "VMTAP:" lines. */

#include <errno.h>
#include <fcntl.h>
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
#define SOCK "/tmp/vfio-user-edu.sock"



static uint32_t mappings(sd_bus *bus, const char *path) {
        uint32_t n = UINT32_MAX;
        (void) sd_bus_get_property_trivial(bus, BUS_NAME, path, CONTAINER, "Mappings", NULL, 'u', &n);
        return n;
}

int main(void) {
        sd_bus *bus = NULL;
        unsigned ids[4];
        char devices[4][32];
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int listener = -EBADF, fd = -EBADF, ram = -EBADF, bar_fd = -EBADF, efd = -EBADF;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int n, r;

        if (sd_bus_open_system(&bus) < 0) {
                vm_tap(false, "vfio-user: connect to the system bus");
                return 1;
        }
        n = vm_find_groups(ids, devices, 4);
        path = vm_create_container(bus, "vfio-user");
        if (n < 1 || !path || vm_call(bus, path, CONTAINER, "AttachGroup", NULL, "u", ids[0])) {
                vm_tap(false, "vfio-user: a container with an edu group");
                return 1;
        }

        listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", SOCK);
        (void) unlink(SOCK);
        if (listener < 0 || bind(listener, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(listener, 4) < 0) {
                vm_tap(false, "vfio-user: a listening socket");
                return 1;
        }
        vm_tap(!vm_call(bus, path, CONTAINER, "ServeVfioUser", NULL, "sh", devices[0], listener),
               "vfio-user: ServeVfioUser %s on the real kernel", devices[0]);
        vm_tap(vm_call(bus, path, CONTAINER, "DetachGroup", NULL, "u", ids[0]) != NULL,
               "vfio-user: the served device keeps its group attached (Busy)");

        fd = vu_connect_path(SOCK);
        vm_tap(fd >= 0 && vu_negotiate(fd) == 0, "vfio-user: connect and negotiate the version");
        if (fd < 0)
                return 1;

        /* What QEMU asks at realize. */
        VfioUserDeviceInfo info = { sizeof(info) };
        size_t size = 0;
        r = vu_call(fd, VFIO_USER_DEVICE_GET_INFO, &info, sizeof(info), NULL, 0, &info, sizeof(info), &size, NULL);
        vm_tap(r == 0 && (info.flags & VFIO_USER_DEVICE_FLAGS_PCI) && info.num_regions >= VFIO_USER_PCI_NUM_REGIONS &&
               info.num_irqs >= VFIO_USER_PCI_NUM_IRQS,
               "vfio-user: DEVICE_GET_INFO is the kernel's (flags 0x%x, %u regions, %u irqs)", info.flags,
               info.num_regions, info.num_irqs);

        /* BAR0: first with room for the bare structure (QEMU does), then for the capabilities. */
        VfioUserRegionInfo ri = { sizeof(ri), 0, VFIO_USER_PCI_BAR0_REGION_INDEX };
        r = vu_call(fd, VFIO_USER_DEVICE_GET_REGION_INFO, &ri, sizeof(ri), NULL, 0, &ri, sizeof(ri), &size, &bar_fd);
        /* No CAPS flag in the short answer: QEMU's client refuses CAPS without a capability offset. */
        vm_tap(r == 0 && ri.size == MiB && (ri.flags & VFIO_USER_REGION_INFO_FLAG_MMAP) && ri.argsz > sizeof(ri) &&
               !(ri.flags & VFIO_USER_REGION_INFO_FLAG_CAPS) && bar_fd < 0,
               "vfio-user: BAR0 is 1 MiB and mmap-able; the capabilities need argsz %u (flags 0x%x)", ri.argsz,
               ri.flags);
        {
                uint8_t buf[256] = {};
                VfioUserRegionInfo q = { ri.argsz, 0, VFIO_USER_PCI_BAR0_REGION_INDEX };
                VfioUserRegionInfo full;
                VfioUserCapSparseMmap cap = {};
                VfioUserSparseMmapArea area = {};
                bool ok;

                r = vu_call(fd, VFIO_USER_DEVICE_GET_REGION_INFO, &q, sizeof(q), NULL, 0, buf, sizeof(buf), &size, &bar_fd);
                memcpy(&full, buf, sizeof(full));
                ok = r == 0 && bar_fd >= 0 && (full.flags & VFIO_USER_REGION_INFO_FLAG_CAPS) &&
                     full.cap_offset == sizeof(full) && size >= sizeof(full) + sizeof(cap) + sizeof(area);
                if (ok) {
                        memcpy(&cap, buf + full.cap_offset, sizeof(cap));
                        memcpy(&area, buf + full.cap_offset + sizeof(cap), sizeof(area));
                        ok = cap.header.id == VFIO_USER_REGION_INFO_CAP_SPARSE_MMAP && cap.nr_areas >= 1 &&
                             area.size > 0;
                }
                vm_tap(ok, "vfio-user: BAR0 comes with an fd and a sparse-mmap capability (%u areas, first 0x%" PRIx64
                       "+0x%" PRIx64 ")", cap.nr_areas, area.offset, area.size);
                /* The VMM maps the BAR and reads the edu's identity without a message. */
                uint32_t *bar = ok ? mmap(NULL, MiB, PROT_READ | PROT_WRITE, MAP_SHARED, bar_fd, (off_t) full.offset)
                                   : MAP_FAILED;
                vm_tap(bar != MAP_FAILED && bar[0] == 0x010000ed,
                       "vfio-user: the mmap'ed BAR0 reads the edu identity 0x010000ed");
                if (bar != MAP_FAILED)
                        munmap(bar, MiB);
        }

        uint32_t id = 0, ident = 0;
        r = vu_region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 0, &id, 4);
        vm_tap(r == 0 && id == 0x11e81234, "vfio-user: config space through REGION_READ is the edu's (0x%08x)", id);
        r = vu_region_read(fd, VFIO_USER_PCI_BAR0_REGION_INDEX, 0, &ident, 4);
        vm_tap(r == 0 && ident == 0x010000ed, "vfio-user: BAR0 through REGION_READ reads the identity");

        uint16_t cmd = 0;
        r = vu_region_read(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 4, &cmd, 2);
        cmd |= 0x6;
        r = r ?: vu_region_write(fd, VFIO_USER_PCI_CONFIG_REGION_INDEX, 4, &cmd, 2);
        vm_tap(r == 0, "vfio-user: bus mastering on through config space");

        /* Guest RAM as a memfd, mapped by DMA_MAP into the real IOMMU. */
        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 4 * MiB) < 0)
                return 1;
        long locked_before = vm_daemon_locked_kib();
        r = vu_dma_map(fd, ram, 0, IOVA, 4 * MiB, 3);
        vm_tap(r == 0 && mappings(bus, path) == 1, "vfio-user: DMA_MAP of the memfd is a mapping of the container");
        vm_tap(vu_dma_map(fd, -1, 0, 0x1000000, MiB, 1) == 0 && mappings(bus, path) == 1,
               "vfio-user: DMA_MAP without fd is acknowledged, not mapped");

        vm_fill(ram, 0x1000, 0x5a, 512);
        r = vu_edu_dma(fd, IOVA + 0x1000, EDU_BUF, 512, 0);
        r = r ?: vu_edu_dma(fd, EDU_BUF, IOVA + 0x20000, 512, 2);
        vm_tap(r == 0 && vm_check(ram, 0x20000, 0x5a, 512),
               "vfio-user: the edu DMAs RAM -> device -> RAM through the IOMMU mappings");

        /* Interrupts: the client's eventfd goes to the kernel's INTx as it is. */
        efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        VfioUserIrqSet set = { sizeof(set), VFIO_USER_IRQ_SET_DATA_EVENTFD | VFIO_USER_IRQ_SET_ACTION_TRIGGER,
                               VFIO_USER_PCI_INTX_IRQ_INDEX, 0, 1 };
        r = vu_call(fd, VFIO_USER_DEVICE_SET_IRQS, &set, sizeof(set), &efd, 1, NULL, 0, NULL, NULL);
        r = r ?: vu_bar0_write32(fd, 0x60, 1); /* edu: raise an interrupt */
        {
                struct pollfd p = { efd, POLLIN, 0 };
                uint64_t ticks = 0;
                bool fired = r == 0 && poll(&p, 1, 3000) == 1 && read(efd, &ticks, sizeof(ticks)) == sizeof(ticks);
                vm_tap(fired, "vfio-user: the edu's INTx fires the client's eventfd (set_irqs %d, %" PRIu64 " events)",
                       r, ticks);
                (void) vu_bar0_write32(fd, 0x64, 1); /* acknowledge */
        }

        /* Unmapped: the device's DMA there faults in the IOMMU and moves nothing. */
        unsigned faults = vm_dmar_faults();
        r = vu_dma_unmap(fd, IOVA, 4 * MiB, 0);
        vm_tap(r == 0 && mappings(bus, path) == 0, "vfio-user: DMA_UNMAP removes the container's mapping");
        (void) vu_edu_dma(fd, EDU_BUF, IOVA + 0x30000, 512, 2);
        usleep(200 * 1000);
        vm_tap(vm_zero(ram, 0x30000, 512) && vm_dmar_faults() > faults,
               "vfio-user: DMA to the unmapped IOVA faults (DMAR %u -> %u) and moves nothing", faults,
               vm_dmar_faults());
        faults = vm_dmar_faults();
        (void) vu_edu_dma(fd, EDU_BUF, 0x1000000, 64, 2);
        usleep(200 * 1000);
        vm_tap(vm_dmar_faults() > faults, "vfio-user: DMA into the range mapped without fd faults too (DMAR %u -> %u)",
               faults, vm_dmar_faults());

        /* The client leaves with a mapping: it goes, nothing stays pinned. */
        r = vu_dma_map(fd, ram, 0, IOVA, 4 * MiB, 3);
        long locked_mapped = vm_daemon_locked_kib();
        vm_tap(r == 0 && mappings(bus, path) == 1 && locked_mapped >= locked_before + 4096,
               "vfio-user: mapped again before the client leaves (locked %ld KiB)", locked_mapped);
        fd = safe_close(fd);
        for (int i = 0; i < 50 && mappings(bus, path) != 0; i++)
                usleep(100 * 1000);
        long locked_after = vm_daemon_locked_kib();
        vm_tap(mappings(bus, path) == 0 && locked_after >= 0 && locked_after <= locked_before,
               "vfio-user: the client's exit unmaps and unpins (locked %ld -> %ld KiB)", locked_before, locked_after);

        /* The device stays served: the next client gets the same device. */
        fd = vu_connect_path(SOCK);
        ident = 0;
        vm_tap(fd >= 0 && vu_negotiate(fd) == 0 &&
               vu_region_read(fd, VFIO_USER_PCI_BAR0_REGION_INDEX, 0, &ident, 4) == 0 && ident == 0x010000ed,
               "vfio-user: a second client gets the device");
        vm_tap(!vm_call(bus, path, CONTAINER, "StopVfioUser", NULL, "s", devices[0]),
               "vfio-user: StopVfioUser");
        vm_tap(!vm_call(bus, path, CONTAINER, "Close", NULL, ""), "vfio-user: Close");
        (void) unlink(SOCK);
        sd_bus_unref(bus);
        return vm_failures > 0;
}
