/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Container.Update through libvfio-broker: batches apply whole, and a failing entry leaves the
 * container exactly as it was (rollback of both the unmaps and the maps done before it). */

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

static vfio_broker *b;
static vfio_broker_container *c;
static int ram[2];

static int setup(void **state) {
        if (vfio_broker_open(&b) < 0 || vfio_broker_container_new(b, "update", &c) < 0 ||
            vfio_broker_container_attach_group(c, 1) < 0)
                return -1;
        for (int i = 0; i < 2; i++) {
                ram[i] = memfd_create("ram", MFD_CLOEXEC);
                if (ram[i] < 0 || ftruncate(ram[i], 8 * MiB) < 0)
                        return -1;
        }
        return 0;
}

static int teardown(void **state) {
        vfio_broker_container_close(c);
        vfio_broker_unref(b);
        return 0;
}

static void counts(uint32_t *mappings, uint64_t *bytes) {
        vfio_broker_container_info info;
        assert_int_equal(vfio_broker_container_get_info(c, &info), 0);
        *mappings = info.mappings;
        *bytes = info.mapped_bytes;
        vfio_broker_container_info_clear(&info);
}

static void test_batch(void **state) {
        vfio_broker_map *maps = calloc(1000, sizeof(*maps));
        uint32_t n;
        uint64_t bytes;

        assert_non_null(maps);
        for (uint32_t i = 0; i < 1000; i++)
                maps[i] = (vfio_broker_map) { .memory = i % 2, .offset = (uint64_t) (i / 2) * 4096, .size = 4096,
                                              .iova = 0x10000000 + (uint64_t) i * 4096, .flags = 3 };
        assert_int_equal(vfio_broker_container_update(c, NULL, 0, ram, 2, maps, 1000), 0);
        counts(&n, &bytes);
        assert_int_equal(n, 1000);
        assert_int_equal(bytes, 1000 * 4096);

        /* Replace 500 small mappings by one large one in a single step. */
        vfio_broker_unmap u = { 0x10000000, 500 * 4096 };
        vfio_broker_map big = { .memory = 1, .offset = 4 * MiB, .size = 2 * MiB, .iova = 0x20000000, .flags = 1 };
        assert_int_equal(vfio_broker_container_update(c, &u, 1, ram, 2, &big, 1), 0);
        counts(&n, &bytes);
        assert_int_equal(n, 501);
        assert_int_equal(bytes, 500 * 4096 + 2 * MiB);
        free(maps);
}

static void test_rollback_on_map(void **state) {
        uint32_t n0, n;
        uint64_t b0, bytes;

        counts(&n0, &b0);
        vfio_broker_unmap u[] = { { 0x10000000 + 500 * 4096, 100 * 4096 } };
        vfio_broker_map m[] = {
                { .memory = 0, .offset = 0, .size = MiB, .iova = 0x30000000, .flags = 3 },
                { .memory = 1, .offset = 0, .size = MiB, .iova = 0x30100000, .flags = 3 },
                { .memory = 0, .offset = 0, .size = 4096, .iova = 0x20000000, .flags = 3 }, /* overlaps */
        };
        assert_int_equal(vfio_broker_container_update(c, u, 1, ram, 2, m, 3), -EEXIST);
        assert_string_equal(vfio_broker_error_name(b), "org.vfiobroker.Broker1.Error.Overlap");
        assert_non_null(strstr(vfio_broker_error_message(b), "Map #2"));
        counts(&n, &bytes);
        assert_int_equal(n, n0);
        assert_int_equal(bytes, b0);
        /* The maps done before the failure are gone, the unmapped range is back. */
        assert_int_equal(vfio_broker_container_unmap(c, 0x30000000, MiB), -ESRCH);
        assert_int_equal(vfio_broker_container_unmap(c, 0x10000000 + 500 * 4096, 4096), 0);
        counts(&n, &bytes);
        assert_int_equal(n, n0 - 1);
}

static void test_rollback_on_unmap(void **state) {
        uint32_t n0, n;
        uint64_t b0, bytes;

        counts(&n0, &b0);
        vfio_broker_unmap u[] = { { 0x10000000 + 600 * 4096, 10 * 4096 }, { 0x20000000 + 4096, 4096 } /* splits */ };
        assert_int_equal(vfio_broker_container_update(c, u, 2, NULL, 0, NULL, 0), -EXDEV);
        assert_non_null(strstr(vfio_broker_error_message(b), "Unmap #1"));
        counts(&n, &bytes);
        assert_int_equal(n, n0);
        assert_int_equal(bytes, b0);

        vfio_broker_map bad = { .memory = 5, .offset = 0, .size = 4096, .iova = 0x40000000, .flags = 3 };
        assert_int_equal(vfio_broker_container_update(c, u, 1, ram, 2, &bad, 1), -EINVAL);
        counts(&n, &bytes);
        assert_int_equal(n, n0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_batch),
                cmocka_unit_test(test_rollback_on_map),
                cmocka_unit_test(test_rollback_on_unmap),
        };
        return cmocka_run_group_tests_name("update", tests, setup, teardown);
}
