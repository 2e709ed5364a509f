/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Benchmark (not a test): the cost of DMA mapping done directly with VFIO ioctls versus through
 * vfio-brokerd on the system bus, on a real kernel (run inside the test VM).
 *
 *   vm-map DIRECT_GROUP BROKER_GROUP [PAIRS]
 *
 * DIRECT_GROUP is opened here with the ioctls a VMM would use; BROKER_GROUP is attached through the
 * broker. Prints the time of a 256 MiB map (which pins 65536 pages) of a memfd the VMM has already
 * touched, direct and brokered in alternating rounds (medians), and of PAIRS 4 KiB map+unmap pairs,
 * both ways, and the ratios. tests/system-vm runs it against the installed package under systemd, the
 * production configuration (persistence on: systemd's fd store and the state directory). The broker pins through a
 * fresh mapping of its own, so the direct side also maps a fresh view of the memfd (as the daemon
 * does) and pins it without populating it first, after MADV_POPULATE_READ and after
 * MADV_POPULATE_WRITE: where the broker's extra time goes. The same 256 MiB map again with memory in
 * 2 MiB huge pages, a hugetlbfs memfd (if the kernel has 128 of them to give) and a memfd whose pages
 * are transparent huge pages (the VMM asked with MADV_HUGEPAGE, the host allows it for shmem): the
 * daemon's fresh view then needs 128 page-table entries, not 65536. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "macro.h"

#define BIG (256ULL << 20)
#define SMALL 4096ULL
#define BIG_IOVA 0x1000000ULL    /* 16 MiB */
#define SMALL_IOVA 0x200000ULL   /* 2 MiB, below BIG_IOVA */

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int die(const char *what) {
        fprintf(stderr, "vm-map: %s: %s\n", what, strerror(errno));
        exit(EXIT_FAILURE);
}

/* What a VMM does before it maps: a type1 container with group in it. */
static int open_container(unsigned group, int *ret_group_fd) {
        char path[64];
        int container, gfd;

        container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
        snprintf(path, sizeof(path), "/dev/vfio/%u", group);
        gfd = open(path, O_RDWR | O_CLOEXEC);
        if (container < 0 || gfd < 0)
                die("open");
        if (ioctl(gfd, VFIO_GROUP_SET_CONTAINER, &container) < 0)
                die("VFIO_GROUP_SET_CONTAINER");
        if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0)
                die("VFIO_SET_IOMMU");
        *ret_group_fd = gfd;
        return container;
}

/* One VFIO_IOMMU_MAP_DMA of BIG bytes at ram, timed, and its unmap. */
static double map_big(int container, void *ram) {
        struct vfio_iommu_type1_dma_map map = {
                .argsz = sizeof(map), .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                .vaddr = (uintptr_t) ram, .iova = BIG_IOVA, .size = BIG,
        };
        struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = BIG_IOVA, .size = BIG };
        double t = now();

        if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map) < 0)
                die("VFIO_IOMMU_MAP_DMA 256 MiB");
        t = now() - t;
        if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
                die("VFIO_IOMMU_UNMAP_DMA");
        return t;
}

static void direct(unsigned group, int memfd, void *ram, unsigned pairs, double ret_fresh[3], double *ret_pair) {
        int gfd, container = open_container(group, &gfd);
        double t;

        struct vfio_iommu_type1_dma_map map = {
                .argsz = sizeof(map), .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                .vaddr = (uintptr_t) ram, .iova = BIG_IOVA, .size = BIG,
        };
        struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = BIG_IOVA, .size = BIG };

        /* A fresh view of the same memfd, with no page tables yet: what the daemon pins through. */
        for (unsigned i = 0; i < 3; i++) {
                static const int advice[] = { -1, MADV_POPULATE_READ, MADV_POPULATE_WRITE };
                void *view = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, memfd, 0);

                if (view == MAP_FAILED)
                        die("mmap fresh view");
                map.vaddr = (uintptr_t) view;
                t = now();
                if (advice[i] >= 0 && madvise(view, BIG, advice[i]) < 0)
                        die("madvise(MADV_POPULATE_*)");
                if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map) < 0)
                        die("VFIO_IOMMU_MAP_DMA 256 MiB fresh view");
                ret_fresh[i] = now() - t;
                if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
                        die("VFIO_IOMMU_UNMAP_DMA");
                munmap(view, BIG);
        }
        map.vaddr = (uintptr_t) ram;

        map.iova = unmap.iova = SMALL_IOVA;
        map.size = unmap.size = SMALL;
        t = now();
        for (unsigned i = 0; i < pairs; i++) {
                if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map) < 0)
                        die("VFIO_IOMMU_MAP_DMA 4 KiB");
                if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
                        die("VFIO_IOMMU_UNMAP_DMA 4 KiB");
        }
        *ret_pair = (now() - t) / pairs;

        close(gfd);
        close(container);
}

/* Only the 256 MiB map of ram (huge pages): the direct side's time. */
static double direct_big(unsigned group, void *ram) {
        int gfd, container = open_container(group, &gfd);
        double t = map_big(container, ram);

        close(gfd);
        close(container);
        return t;
}

static void bus_call(sd_bus *bus, const char *path, const char *member, sd_bus_message **reply,
                     const char *types, ...) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        va_list ap;

        if (sd_bus_message_new_method_call(bus, &m, "org.vfiobroker.Broker1", path,
                                           strcmp(path, "/org/vfiobroker/Broker1") != 0 ? "org.vfiobroker.Broker1.Container"
                                                                                  : "org.vfiobroker.Broker1.Manager",
                                           member) < 0)
                die("new method call");
        va_start(ap, types);
        if (sd_bus_message_appendv(m, types, ap) < 0)
                die("append");
        va_end(ap);
        if (sd_bus_call(bus, m, 0, &error, reply) < 0) {
                fprintf(stderr, "vm-map: %s: %s: %s\n", member, error.name, error.message);
                exit(EXIT_FAILURE);
        }
}

/* The floor of a call through the broker: an empty round trip on the same bus. */
static double bus_round_trip(unsigned n) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        double t;

        if (sd_bus_open_system(&bus) < 0)
                die("sd_bus_open_system");
        t = now();
        for (unsigned i = 0; i < n; i++)
                if (sd_bus_call_method(bus, "org.vfiobroker.Broker1", "/org/vfiobroker/Broker1",
                                       "org.freedesktop.DBus.Peer", "Ping", NULL, NULL, "") < 0)
                        die("Ping");
        return (now() - t) / n;
}

static void brokered(unsigned group, int memfd, unsigned pairs, double *ret_big, double *ret_pair) {
        /* pairs == 0: only the big map. */
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *path = NULL;
        const char *p;
        double t;

        if (sd_bus_open_system(&bus) < 0)
                die("sd_bus_open_system");
        bus_call(bus, "/org/vfiobroker/Broker1", "CreateContainer", &reply, "a{sv}", 1, "Label", "s", "bench");
        if (sd_bus_message_read(reply, "o", &p) < 0 || !(path = strdup(p)))
                die("read");
        bus_call(bus, path, "AttachGroup", NULL, "u", group);

        t = now();
        bus_call(bus, path, "Map", NULL, "htttu", memfd, UINT64_C(0), BIG, BIG_IOVA, UINT32_C(3));
        *ret_big = now() - t;
        bus_call(bus, path, "Unmap", NULL, "tt", BIG_IOVA, BIG);

        t = now();
        for (unsigned i = 0; i < pairs; i++) {
                bus_call(bus, path, "Map", NULL, "htttu", memfd, UINT64_C(0), SMALL, SMALL_IOVA, UINT32_C(3));
                bus_call(bus, path, "Unmap", NULL, "tt", SMALL_IOVA, SMALL);
        }
        if (pairs > 0)
                *ret_pair = (now() - t) / pairs;

        bus_call(bus, path, "Close", NULL, "");
}

/* The direct map and the brokered one of the same memory, alternately: the machine (a TCG guest on a
 * shared host) changes speed within a run, so the ratio is the median of the rounds' own ratios. */
enum { ROUNDS = 5 };

typedef struct BigMap {
        double direct, broker;                     /* medians, seconds */
        double ratio, ratio_min, ratio_max;
} BigMap;

static int compare_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static double median(double *v, size_t n) {
        qsort(v, n, sizeof(double), compare_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static BigMap compare_big(unsigned direct_group, unsigned broker_group, void *ram, int memfd) {
        double d[ROUNDS], b[ROUNDS], r[ROUNDS], unused;
        BigMap m;

        for (unsigned i = 0; i < ROUNDS; i++) {
                d[i] = direct_big(direct_group, ram);
                brokered(broker_group, memfd, 0, &b[i], &unused);
                r[i] = b[i] / d[i];
        }
        m.direct = median(d, ROUNDS);
        m.broker = median(b, ROUNDS);
        m.ratio = median(r, ROUNDS);
        m.ratio_min = r[0];
        m.ratio_max = r[ROUNDS - 1];
        return m;
}

static void print_big(const char *what, const BigMap *m) {
        printf("%-36s %11.3f ms %11.3f ms %7.2fx\n", what, m->direct * 1e3, m->broker * 1e3, m->ratio);
        printf("  (medians of %u alternating rounds; the ratio ranges %.2f-%.2fx)\n", ROUNDS, m->ratio_min,
               m->ratio_max);
}

int main(int argc, char *argv[]) {
        double d_fresh[3], d_pair, b_big, b_pair = 0;
        unsigned pairs = 1000;
        void *ram;
        int memfd;

        if (argc < 3) {
                fprintf(stderr, "Usage: %s DIRECT_GROUP BROKER_GROUP [PAIRS]\n", argv[0]);
                return EXIT_FAILURE;
        }
        if (argc > 3)
                pairs = (unsigned) strtoul(argv[3], NULL, 0);

        memfd = memfd_create("bench-ram", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, (off_t) BIG) < 0)
                die("memfd");
        ram = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (ram == MAP_FAILED)
                die("mmap");
        /* Allocate every page first, so both sides measure pinning, not first-touch allocation. */
        memset(ram, 0, BIG);

        BigMap big = compare_big((unsigned) atoi(argv[1]), (unsigned) atoi(argv[2]), ram, memfd);
        double d_big = big.direct;
        direct((unsigned) atoi(argv[1]), memfd, ram, pairs, d_fresh, &d_pair);
        brokered((unsigned) atoi(argv[2]), memfd, pairs, &b_big, &b_pair);

        printf("%-36s %14s %14s %8s\n", "operation", "direct ioctl", "via broker", "ratio");
        print_big("map 256 MiB pre-touched (65536 pages)", &big);
        printf("%-36s %11.3f ms %14s %7.2fx\n", "  direct, fresh view, no populate", d_fresh[0] * 1e3, "-",
               d_fresh[0] / d_big);
        printf("%-36s %11.3f ms %14s %7.2fx\n", "  direct, fresh view, POPULATE_READ", d_fresh[1] * 1e3, "-",
               d_fresh[1] / d_big);
        printf("%-36s %11.3f ms %14s %7.2fx\n", "  direct, fresh view, POPULATE_WRITE", d_fresh[2] * 1e3, "-",
               d_fresh[2] / d_big);
        printf("%-36s %11.1f us %11.1f us %7.2fx\n", "4 KiB map+unmap pair (mean)", d_pair * 1e6, b_pair * 1e6,
               b_pair / d_pair);
        double rt = bus_round_trip(pairs > 100 ? 100 : pairs + 1);
        printf("%-36s %14s %11.1f us %7.2fx\n", "  floor: two empty bus round trips", "-", 2 * rt * 1e6,
               b_pair / (2 * rt));

        /* Huge pages, where the VMM's memory has them. */
        int huge = memfd_create("bench-ram-huge", MFD_CLOEXEC | MFD_HUGETLB);
        void *hram = MAP_FAILED;
        if (huge >= 0 && ftruncate(huge, (off_t) BIG) >= 0)
                hram = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_SHARED, huge, 0);
        if (hram != MAP_FAILED) {
                memset(hram, 0, BIG);
                BigMap h = compare_big((unsigned) atoi(argv[1]), (unsigned) atoi(argv[2]), hram, huge);
                print_big("map 256 MiB pre-touched, 2 MiB pages", &h);
        } else
                printf("%-36s %14s %14s %8s\n", "map 256 MiB pre-touched, 2 MiB pages", "no huge pages", "-", "-");

        /* Transparent huge pages in the memfd, as a VMM gets them with MADV_HUGEPAGE on its guest RAM
         * where /sys/kernel/mm/transparent_hugepage/shmem_enabled is advise (the test sets it). */
        int thp = memfd_create("bench-ram-thp", MFD_CLOEXEC);
        void *tram = MAP_FAILED;
        if (thp >= 0 && ftruncate(thp, (off_t) BIG) >= 0)
                tram = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_SHARED, thp, 0);
        if (tram != MAP_FAILED && madvise(tram, BIG, MADV_HUGEPAGE) == 0) {
                memset(tram, 0, BIG);
                BigMap th = compare_big((unsigned) atoi(argv[1]), (unsigned) atoi(argv[2]), tram, thp);
                print_big("map 256 MiB pre-touched, THP memfd", &th);
                /* Whether the kernel gave huge pages at all: otherwise the row measures 4 KiB pages. */
                FILE *mi = fopen("/proc/meminfo", "re");
                char line[128];
                while (mi && fgets(line, sizeof(line), mi))
                        if (strncmp(line, "ShmemHugePages:", 15) == 0)
                                printf("  (while it was held: %.*s)\n", (int) strcspn(line, "\n"), line);
                if (mi)
                        fclose(mi);
        } else
                printf("%-36s %14s %14s %8s\n", "map 256 MiB pre-touched, THP memfd", "no THP", "-", "-");
        printf("(%u pairs; QEMU TCG guest, so absolute figures are slower than on hardware)\n", pairs);
        return EXIT_SUCCESS;
}
