/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Coordinated discard through libvfio-broker on the sim backend: a region mapped in granules whose
 * granules are discarded and populated again, published in DiscardableRanges, with every bad request
 * refused without a change. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include <vfio-broker/vfio-broker.h>

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define BASE UINT64_C(0x40000000)

static vfio_broker *b;
static vfio_broker_container *c;
static int ram;

static int setup(void **state) {
        if (vfio_broker_open(&b) < 0 || vfio_broker_container_new(b, "discard", &c) < 0 ||
            vfio_broker_container_attach_group(c, 1) < 0)
                return -1;
        ram = memfd_create("ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 2 * GiB) < 0)
                return -1;
        return 0;
}

static int teardown(void **state) {
        vfio_broker_container_close(c);
        vfio_broker_unref(b);
        return 0;
}

typedef struct Counts {
        uint32_t mappings;
        uint64_t bytes;
        size_t n_regions;
        vfio_broker_discardable_range region;
        bool inhibited;
} Counts;

static Counts counts(void) {
        vfio_broker_container_info i;
        Counts k = {};
        assert_int_equal(vfio_broker_container_get_info(c, &i), 0);
        k.mappings = i.mappings;
        k.bytes = i.mapped_bytes;
        k.n_regions = i.n_discardable;
        if (i.n_discardable > 0)
                k.region = i.discardable[0];
        k.inhibited = i.balloon_inhibited;
        vfio_broker_container_info_clear(&i);
        return k;
}

static void assert_counts(uint32_t mappings, uint64_t bytes, size_t regions) {
        Counts k = counts();
        assert_int_equal(k.mappings, mappings);
        assert_int_equal(k.bytes, bytes);
        assert_int_equal(k.n_regions, regions);
}

static void test_region(void **state) {
        /* 8 MiB of "virtio-mem" at BASE, 2 MiB granules, nothing plugged yet. */
        assert_int_equal(vfio_broker_container_map_discardable(c, ram, 0, 8 * MiB, BASE, 3, 2 * MiB, false), 0);
        Counts k = counts();
        assert_int_equal(k.mappings, 0);
        assert_int_equal(k.n_regions, 1);
        assert_int_equal(k.region.first, BASE);
        assert_int_equal(k.region.last, BASE + 8 * MiB - 1);
        assert_int_equal(k.region.granule, 2 * MiB);

        assert_int_equal(vfio_broker_container_populate(c, BASE, 4 * MiB), 0);
        assert_counts(2, 4 * MiB, 1);
        /* Populating what is populated already is no change. */
        assert_int_equal(vfio_broker_container_populate(c, BASE, 8 * MiB), 0);
        assert_counts(4, 8 * MiB, 1);

        /* Before the VMM punches a hole: the granule leaves the IOMMU. */
        assert_int_equal(vfio_broker_container_discard(c, BASE + 2 * MiB, 2 * MiB), 0);
        assert_counts(3, 6 * MiB, 1);
        assert_int_equal(vfio_broker_container_discard(c, BASE + 2 * MiB, 2 * MiB), 0);
        assert_counts(3, 6 * MiB, 1);
        /* The balloon state of the container stays per group (SPEC); the regions say where it may reclaim. */
        assert_true(counts().inhibited);
}

static void test_bad_requests(void **state) {
        /* Ranges that are not granule-aligned, outside any region, or past its end. */
        assert_int_equal(vfio_broker_container_discard(c, BASE + MiB, 2 * MiB), -EFAULT);
        assert_int_equal(vfio_broker_container_populate(c, BASE, MiB), -EFAULT);
        assert_int_equal(vfio_broker_container_discard(c, BASE - 2 * MiB, 2 * MiB), -ESRCH);
        assert_int_equal(vfio_broker_container_populate(c, BASE + 6 * MiB, 4 * MiB), -ERANGE);
        assert_int_equal(vfio_broker_container_discard(c, BASE, 0), -EINVAL);
        assert_counts(3, 6 * MiB, 1);

        /* A plain mapping may not reach into a region, even into a discarded granule. */
        assert_int_equal(vfio_broker_container_map(c, ram, 0, 2 * MiB, BASE + 2 * MiB, 3), -EEXIST);
        assert_non_null(strstr(vfio_broker_error_message(b), "discardable region"));
        /* A region may not overlap anything. */
        assert_int_equal(vfio_broker_container_map_discardable(c, ram, 0, 4 * MiB, BASE + 6 * MiB, 3, 2 * MiB, true), -EEXIST);
        /* Granules: a power of two of at least a page, and everything aligned to it. */
        assert_int_equal(vfio_broker_container_map_discardable(c, ram, 0, 6 * MiB, 2 * GiB, 3, 3 * MiB, true), -EFAULT);
        assert_int_equal(vfio_broker_container_map_discardable(c, ram, 0, 4 * MiB, 2 * GiB, 3, 2048, true), -EFAULT);
        assert_int_equal(vfio_broker_container_map_discardable(c, ram, MiB, 4 * MiB, 2 * GiB, 3, 2 * MiB, true), -EFAULT);
        /* Populated in 4 KiB granules, 1 GiB would need 262144 kernel mappings: more than type1 allows. */
        assert_int_equal(vfio_broker_container_map_discardable(c, ram, 0, GiB, 2 * GiB, 3, 4096, true), -EDQUOT);
        assert_non_null(strstr(vfio_broker_error_message(b), "DmaAvailable"));
        /* Regions go whole: Unmap() may not cut one, Update() may not touch one. */
        assert_int_equal(vfio_broker_container_unmap(c, BASE, 4 * MiB), -EXDEV);
        vfio_broker_unmap u = { BASE, 8 * MiB };
        assert_int_equal(vfio_broker_container_update(c, &u, 1, NULL, 0, NULL, 0), -EINVAL);
        assert_counts(3, 6 * MiB, 1);
}

static void test_unmap_region(void **state) {
        assert_int_equal(vfio_broker_container_unmap(c, BASE, 8 * MiB), 0);
        assert_counts(0, 0, 0);
        assert_int_equal(vfio_broker_container_discard(c, BASE, 2 * MiB), -ESRCH);

        /* A region populated from the start, removed while fully discarded. */
        assert_int_equal(vfio_broker_container_map_discardable(c, ram, GiB, 64 * MiB, 2 * GiB, 1, 2 * MiB, true), 0);
        assert_counts(32, 64 * MiB, 1);
        assert_int_equal(vfio_broker_container_discard(c, 2 * GiB, 64 * MiB), 0);
        assert_counts(0, 0, 1);
        assert_int_equal(vfio_broker_container_unmap(c, 2 * GiB, 64 * MiB), 0);
        assert_counts(0, 0, 0);
        /* The region's memory went with it: the range is free for a plain mapping. */
        assert_int_equal(vfio_broker_container_map(c, ram, 0, 2 * MiB, 2 * GiB, 3), 0);
        assert_counts(1, 2 * MiB, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_region),
                cmocka_unit_test(test_bad_requests),
                cmocka_unit_test(test_unmap_region),
        };
        return cmocka_run_group_tests_name("discard", tests, setup, teardown);
}
