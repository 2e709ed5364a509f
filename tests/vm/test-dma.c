/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Runs in the test VM against vfio-brokerd --backend=vfio: a VMM-like client whose RAM is a memfd
 * proves that an edu device DMAs into that memfd through the mappings the daemon made, and nowhere
 * else. Prints "VMTAP: ok|not ok - name" lines. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/vfio.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "edu.h"
#include "vm-client.h"
#include "macro.h"

#define tap vm_tap
#define call(...) vm_call(bus, __VA_ARGS__)
#define fill vm_fill
#define check vm_check
#define all_zero vm_zero

#define BUS_NAME "org.vfiobroker.Broker1"
#define ROOT "/org/vfiobroker/Broker1"
#define CONTAINER BUS_NAME ".Container"
#define MiB (UINT64_C(1) << 20)

static sd_bus *bus;

#define create_container(label) vm_create_container(bus, label)
#define open_device(path, device) vm_open_device(bus, path, device)
#define find_groups vm_find_groups
#define dmar_faults vm_dmar_faults
#define daemon_locked_kib vm_daemon_locked_kib

int main(void) {
        unsigned ids[4];
        char devices[4][32];
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int ram = -EBADF, dev = -EBADF, dev2 = -EBADF;
        Edu edu, edu2;
        int n;

        if (sd_bus_open_system(&bus) < 0) {
                tap(false, "dma: connect to the system bus");
                return 1;
        }
        n = find_groups(ids, devices, 4);
        tap(n >= 2, "dma: two edu devices in their own VFIO groups (%d found)", n);
        if (n < 2)
                return 1;

        /* IovaRanges and PageSizes are the kernel's: ask it directly for the second group first. */
        {
                char gpath[32];
                uint64_t pgsizes = 0;
                int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC), group;
                snprintf(gpath, sizeof(gpath), "/dev/vfio/%u", ids[1]);
                group = open(gpath, O_RDWR | O_CLOEXEC);
                struct { struct vfio_iommu_type1_info info; char caps[4096]; } buf = { .info.argsz = sizeof(buf) };
                bool ok = container >= 0 && group >= 0 && ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) == 0 &&
                          ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0 &&
                          ioctl(container, VFIO_IOMMU_GET_INFO, &buf) == 0;
                pgsizes = buf.info.iova_pgsizes;
                close(group);
                close(container);

                path = create_container("dma-test");
                ok = ok && path && !call(path, CONTAINER, "AttachGroup", NULL, "u", ids[0]);
                uint64_t broker_pgsizes = 0;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                ok = ok && sd_bus_get_property_trivial(bus, BUS_NAME, path, CONTAINER, "PageSizes", NULL, 't', &broker_pgsizes) >= 0;
                tap(ok && pgsizes == broker_pgsizes && pgsizes != 0,
                    "dma: PageSizes is the kernel's (kernel 0x%" PRIx64 ", broker 0x%" PRIx64 ")", pgsizes, broker_pgsizes);
                /* The kernel's IOVA capability, walked by hand. */
                uint64_t first = 0, last = 0;
                bool have = false, match = true;
                /* The kernel's IOVA capability, found by walking the chain. */
                for (uint32_t off = (buf.info.flags & VFIO_IOMMU_INFO_CAPS) ? buf.info.cap_offset : 0;
                     off >= sizeof(buf.info) && off < sizeof(buf) - 16;) {
                        /* Capabilities sit at 4-byte offsets: copy one out before reading it. */
                        static union { struct vfio_info_cap_header h; uint64_t align; char bytes[4096]; } copy;
                        memcpy(copy.bytes, (char *) &buf + off, sizeof(buf) - off);
                        struct vfio_info_cap_header *h = &copy.h;
                        if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
                                struct vfio_iommu_type1_info_cap_iova_range *cap = (void *) copy.bytes;
                                ok = sd_bus_get_property(bus, BUS_NAME, path, CONTAINER, "IovaRanges", NULL, &m, "a(tt)") >= 0 &&
                                     sd_bus_message_enter_container(m, 'a', "(tt)") >= 0;
                                for (unsigned i = 0; ok && i < cap->nr_iovas; i++) {
                                        if (sd_bus_message_read(m, "(tt)", &first, &last) <= 0 ||
                                            first != cap->iova_ranges[i].start || last != cap->iova_ranges[i].end)
                                                match = false;
                                        fprintf(stderr, "VMLOG: kernel IOVA range [0x%llx, 0x%llx], broker [0x%llx, 0x%llx]\n",
                                                (unsigned long long) cap->iova_ranges[i].start,
                                                (unsigned long long) cap->iova_ranges[i].end,
                                                (unsigned long long) first, (unsigned long long) last);
                                }
                                if (ok && sd_bus_message_read(m, "(tt)", &first, &last) != 0)
                                        match = false; /* the broker lists more */
                                have = true;
                                break;
                        }
                        if (h->next <= off)
                                break;
                        off = h->next;
                }
                tap(ok && have && match, "dma: IovaRanges are the kernel's VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE");
        }

        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 16 * MiB) < 0)
                return 1;

        /* Guest RAM [0, 4 MiB) of the memfd at IOVA 1 MiB, and [8 MiB, 9 MiB) at IOVA 8 MiB: the second
         * catches a daemon that maps the wrong offset. */
        tap(!call(path, CONTAINER, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, 1 * MiB, UINT32_C(3)),
            "dma: Map 4 MiB of the memfd at IOVA 0x100000");
        tap(!call(path, CONTAINER, "Map", NULL, "htttu", ram, 8 * MiB, 1 * MiB, 8 * MiB, UINT32_C(3)),
            "dma: Map memfd offset 8 MiB at IOVA 0x800000");

        dev = open_device(path, devices[0]);
        tap(dev >= 0 && edu_open(&edu, dev) == 0, "dma: OpenDevice %s gives a working VFIO device fd", devices[0]);
        if (dev < 0)
                return 1;

        /* RAM -> device -> RAM. */
        fill(ram, 0x1000, 0x5a, 1024);
        bool ok = edu_dma_to_device(&edu, 1 * MiB + 0x1000, 0, 1024) == 0 &&
                  edu_dma_from_device(&edu, 0, 1 * MiB + 0x20000, 1024) == 0;
        tap(ok && check(ram, 0x20000, 0x5a, 1024),
            "dma: the device reads the memfd and writes it back through the broker's mapping");

        fill(ram, 0x3000, 0x33, 2048);
        ok = edu_dma_to_device(&edu, 1 * MiB + 0x3000, 0, 2048) == 0 &&
             edu_dma_from_device(&edu, 0, 8 * MiB + 0x4000, 2048) == 0;
        tap(ok && check(ram, 8 * MiB + 0x4000, 0x33, 2048) && all_zero(ram, 0x4000, 2048),
            "dma: a write to IOVA 0x804000 lands at memfd offset 0x804000 (the mapping's offset is honoured)");

        /* Unmap, and the device can no longer reach that memory. */
        unsigned faults_before = dmar_faults();
        fill(ram, 0x5000, 0x77, 1024);
        ok = edu_dma_to_device(&edu, 1 * MiB + 0x5000, 0, 1024) == 0;
        tap(!call(path, CONTAINER, "Unmap", NULL, "tt", 8 * MiB, 1 * MiB), "dma: Unmap IOVA [0x800000, 0x900000)");
        ok = ok && edu_dma_from_device(&edu, 0, 8 * MiB + 0x8000, 1024) == 0;
        tap(ok && all_zero(ram, 8 * MiB + 0x8000, 1024), "dma: after Unmap the device's write does not land");
        unsigned faults_after = 0;
        for (int i = 0; i < 20 && (faults_after = dmar_faults()) <= faults_before; i++)
                usleep(100000);
        tap(faults_after > faults_before, "dma: the kernel logged a DMAR fault for the blocked write (%u -> %u)",
            faults_before, faults_after);

        /* A second group in the same container shares the mappings. */
        tap(!call(path, CONTAINER, "AttachGroup", NULL, "u", ids[1]), "dma: AttachGroup of the second edu group");
        dev2 = open_device(path, devices[1]);
        fill(ram, 0x6000, 0x99, 512);
        ok = dev2 >= 0 && edu_open(&edu2, dev2) == 0 &&
             edu_dma_to_device(&edu2, 1 * MiB + 0x6000, 0x100, 512) == 0 &&
             edu_dma_from_device(&edu2, 0x100, 1 * MiB + 0x30000, 512) == 0;
        tap(ok && check(ram, 0x30000, 0x99, 512), "dma: the second group's device uses the same mappings");

        const char *e = call(path, CONTAINER, "DetachGroup", NULL, "u", ids[1]);
        tap(e && strstr(e, "Error.Busy"), "dma: DetachGroup with the device fd open is Busy");
        dev2 = safe_close(dev2);
        tap(!call(path, CONTAINER, "DetachGroup", NULL, "u", ids[1]), "dma: DetachGroup once the fd is closed");

        long locked = daemon_locked_kib();
        tap(locked >= 4 * 1024, "dma: the daemon holds the pinned pages (%ld KiB locked)", locked);

        dev = safe_close(dev);
        tap(!call(path, CONTAINER, "Close", NULL, ""), "dma: Close");
        locked = daemon_locked_kib();
        tap(locked == 0, "dma: nothing stays pinned after Close (%ld KiB locked)", locked);

        /* Hugetlbfs-backed RAM, when the VM has huge pages. */
        {
                int huge = memfd_create("huge-ram", MFD_CLOEXEC | MFD_HUGETLB);
                if (huge >= 0 && ftruncate(huge, 4 * MiB) == 0) {
                        _cleanup_free_ char *hp = create_container("dma-huge");
                        _cleanup_close_ int hd = -EBADF;
                        Edu he;
                        ok = hp && !call(hp, CONTAINER, "AttachGroup", NULL, "u", ids[0]) &&
                             !call(hp, CONTAINER, "Map", NULL, "htttu", huge, UINT64_C(0), 4 * MiB, 16 * MiB, UINT32_C(3));
                        e = hp ? call(hp, CONTAINER, "Map", NULL, "htttu", huge, UINT64_C(0x1000), UINT64_C(0x1000), 32 * MiB, UINT32_C(3)) : NULL;
                        bool unaligned = e && strstr(e, "Error.Unaligned");
                        hd = hp ? open_device(hp, devices[0]) : -1;
                        /* hugetlbfs has no write(): go through a mapping, as a VMM does. */
                        uint8_t *mem = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, huge, 0);
                        ok = ok && mem != MAP_FAILED;
                        for (size_t i = 0; ok && i < 1024; i++)
                                mem[0x2000 + i] = (uint8_t) (0x42 + i * 7);
                        ok = ok && hd >= 0 && edu_open(&he, hd) == 0 &&
                             edu_dma_to_device(&he, 16 * MiB + 0x2000, 0, 1024) == 0 &&
                             edu_dma_from_device(&he, 0, 16 * MiB + 0x200000, 1024) == 0;
                        for (size_t i = 0; ok && i < 1024; i++)
                                ok = mem[0x200000 + i] == (uint8_t) (0x42 + i * 7);
                        if (mem != MAP_FAILED)
                                munmap(mem, 4 * MiB);
                        tap(ok, "dma: hugetlbfs-backed RAM works end to end");
                        tap(unaligned, "dma: a 4 KiB-aligned Map of hugetlbfs memory is Unaligned");
                        hd = safe_close(hd);
                        if (hp)
                                call(hp, CONTAINER, "Close", NULL, "");
                } else
                        tap(false, "dma: the VM offers huge pages (memfd MFD_HUGETLB: %s)", strerror(errno));
                if (huge >= 0)
                        close(huge);
        }

        /* A VMM killed with everything attached, mapped and open leaves nothing pinned. */
        {
                int p[2];
                char cpath[128] = {};
                if (pipe2(p, O_CLOEXEC) < 0)
                        return 1;
                pid_t pid = fork();
                if (pid == 0) {
                        sd_bus_flush_close_unref(bus);
                        if (sd_bus_open_system(&bus) < 0)
                                _exit(1);
                        char *c = create_container("doomed");
                        int mem = memfd_create("doomed", MFD_CLOEXEC);
                        if (!c || mem < 0 || ftruncate(mem, 64 * MiB) < 0 ||
                            call(c, CONTAINER, "AttachGroup", NULL, "u", ids[0]) ||
                            call(c, CONTAINER, "AttachGroup", NULL, "u", ids[1]) ||
                            call(c, CONTAINER, "Map", NULL, "htttu", mem, UINT64_C(0), 64 * MiB, 64 * MiB, UINT32_C(3)) ||
                            open_device(c, devices[0]) < 0)
                                _exit(2);
                        if (write(p[1], c, strlen(c)) < 0)
                                _exit(3);
                        for (;;)
                                pause();
                }
                close(p[1]);
                ok = read(p[0], cpath, sizeof(cpath) - 1) > 0;
                close(p[0]);
                locked = daemon_locked_kib();
                tap(ok && locked >= 64 * 1024, "dma: a VMM with 64 MiB mapped pins it in the daemon (%ld KiB)", locked);
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                for (int i = 0; i < 100 && (locked = daemon_locked_kib()) != 0; i++)
                        usleep(100000);
                tap(locked == 0, "dma: after kill -9 of the VMM nothing stays pinned (%ld KiB)", locked);
                _cleanup_free_ char *again = create_container("after-kill");
                ok = again && !call(again, CONTAINER, "AttachGroup", NULL, "u", ids[0]) &&
                     !call(again, CONTAINER, "AttachGroup", NULL, "u", ids[1]) &&
                     !call(again, CONTAINER, "Close", NULL, "");
                tap(ok, "dma: both groups can be attached again after the kill");
        }

        sd_bus_flush_close_unref(bus);
        return vm_failures ? 1 : 0;
}
