/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Update with many memory fds through libvfio-broker, on the bus (VFIO_BROKER_PEER=0) and on the peer
 * connection. dbus-daemon disconnects a sender whose message carries more fds than its
 * max_message_unix_fds (16 on the system bus), and the broker then closes every container of that
 * connection: the library must split what it sends so that never happens, and a split Update must
 * stay all or nothing. */

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

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define N_RAM 300               /* more than any transport passes in one message (253) */
#define RAM_SIZE (64 * KiB)
#define IOVA(i) (UINT64_C(0x10000000) + (uint64_t) (i) * MiB)

static vfio_broker *b;
static vfio_broker_container *c;
static int ram[N_RAM];

static int setup(void **state) {
        const char *peer = getenv("VFIO_BROKER_PEER");

        printf("# transport: %s\n", peer && strcmp(peer, "0") == 0 ? "the bus" : "the peer connection if offered");
        if (vfio_broker_open(&b) < 0 || vfio_broker_container_new(b, "update-fds", &c) < 0 ||
            vfio_broker_container_attach_group(c, 1) < 0)
                return -1;
        for (int i = 0; i < N_RAM; i++) {
                ram[i] = memfd_create("ram", MFD_CLOEXEC);
                if (ram[i] < 0 || ftruncate(ram[i], RAM_SIZE) < 0)
                        return -1;
        }
        return 0;
}

static int teardown(void **state) {
        for (int i = 0; i < N_RAM; i++)
                close(ram[i]);
        vfio_broker_container_close(c);
        vfio_broker_unref(b);
        return 0;
}

static uint32_t mappings(void) {
        vfio_broker_container_info info;
        uint32_t n;

        assert_int_equal(vfio_broker_container_get_info(c, &info), 0);
        n = info.mappings;
        vfio_broker_container_info_clear(&info);
        return n;
}

/* The connection, and with it the container, is still there. */
static void assert_container_alive(void) {
        vfio_broker_container_info *infos;
        vfio_broker_status s;
        size_t n;
        bool found = false;

        assert_int_equal(vfio_broker_get_status(b, &s), 0);
        vfio_broker_status_clear(&s);
        assert_int_equal(vfio_broker_list_containers(b, &infos, &n), 0);
        for (size_t i = 0; i < n; i++)
                found = found || strcmp(infos[i].path, vfio_broker_container_get_path(c)) == 0;
        vfio_broker_container_infos_free(infos, n);
        assert_true(found);
}

static void fill_maps(vfio_broker_map *maps, size_t n, size_t first) {
        for (size_t i = 0; i < n; i++)
                maps[i] = (vfio_broker_map) { .memory = i, .size = RAM_SIZE, .iova = IOVA(first + i), .flags = 3 };
}

static void unmap_all(size_t n) {
        vfio_broker_unmap u = { IOVA(0), IOVA(n) - IOVA(0) };
        assert_int_equal(vfio_broker_container_unmap(c, u.iova, u.size), 0);
        assert_int_equal(mappings(), 0);
}

/* 40 distinct memfds in one Update: more than dbus-daemon lets through in one message. */
static void test_update_40_fds(void **state) {
        vfio_broker_map maps[40];

        fill_maps(maps, 40, 0);
        assert_int_equal(vfio_broker_container_update(c, NULL, 0, ram, 40, maps, 40), 0);
        assert_container_alive();
        assert_int_equal(mappings(), 40);
        /* Every mapping is where it was asked for: each unmaps alone. */
        for (size_t i = 0; i < 40; i++)
                assert_int_equal(vfio_broker_container_unmap(c, IOVA(i), RAM_SIZE), 0);
        assert_int_equal(mappings(), 0);
}

/* More fds than the kernel passes in one sendmsg() (SCM_MAX_FD, 253), on any transport. */
static void test_update_300_fds(void **state) {
        static vfio_broker_map maps[N_RAM];

        fill_maps(maps, N_RAM, 0);
        assert_int_equal(vfio_broker_container_update(c, NULL, 0, ram, N_RAM, maps, N_RAM), 0);
        assert_container_alive();
        assert_int_equal(mappings(), N_RAM);
        unmap_all(N_RAM);
}

/* A series of Map calls, one memfd each: the same RAM layout without Update. */
static void test_series_of_maps(void **state) {
        for (size_t i = 0; i < 40; i++)
                assert_int_equal(vfio_broker_container_map(c, ram[i], 0, RAM_SIZE, IOVA(i), 3), 0);
        assert_container_alive();
        assert_int_equal(mappings(), 40);
        unmap_all(40);
}

/* A failure in a later part undoes the earlier parts: the container is as before, and the error
 * names the entry as the caller numbered it. */
static void test_split_all_or_nothing(void **state) {
        vfio_broker_map maps[40];

        assert_int_equal(vfio_broker_container_map(c, ram[0], 0, RAM_SIZE, IOVA(100), 3), 0);
        fill_maps(maps, 40, 0);
        maps[39].iova = IOVA(100); /* overlaps the mapping above */
        assert_int_equal(vfio_broker_container_update(c, NULL, 0, ram, 40, maps, 40), -EEXIST);
        assert_string_equal(vfio_broker_error_name(b), "org.vfiobroker.Broker1.Error.Overlap");
        printf("# %s\n", vfio_broker_error_message(b));
        assert_non_null(strstr(vfio_broker_error_message(b), "Map #39"));
        assert_container_alive();
        assert_int_equal(mappings(), 1);
        for (size_t i = 0; i < 39; i++)
                assert_int_equal(vfio_broker_container_unmap(c, IOVA(i), RAM_SIZE), -ESRCH);

        /* A failing unmap: nothing of the maps stays either. */
        vfio_broker_unmap u = { IOVA(100) + 4 * KiB, 4 * KiB }; /* cuts the mapping */
        fill_maps(maps, 40, 0);
        assert_int_equal(vfio_broker_container_update(c, &u, 1, ram, 40, maps, 40), -EXDEV);
        assert_int_equal(mappings(), 1);

        /* Replace the mapping at IOVA(100) and add 39 more in one Update. */
        u = (vfio_broker_unmap) { IOVA(100), RAM_SIZE };
        maps[39].iova = IOVA(100);
        assert_int_equal(vfio_broker_container_update(c, &u, 1, ram, 40, maps, 40), 0);
        assert_int_equal(mappings(), 40);
        assert_int_equal(vfio_broker_container_unmap(c, IOVA(0), IOVA(101) - IOVA(0)), 0);
        assert_int_equal(mappings(), 0);
        assert_container_alive();
}

/* Bad input is refused before anything is sent. */
static void test_bad_index(void **state) {
        vfio_broker_map maps[40];

        fill_maps(maps, 40, 0);
        maps[20].memory = 40;
        assert_int_equal(vfio_broker_container_update(c, NULL, 0, ram, 40, maps, 40), -EINVAL);
        assert_non_null(strstr(vfio_broker_error_message(b), "Map #20"));
        assert_int_equal(mappings(), 0);
        assert_container_alive();
}

/* Maps that replace unmapped ranges must travel with the unmaps: when their fds do not fit in one
 * message on any transport (254 > 253), the Update is refused whole, before anything is sent. */
static void test_too_many_fds_after_unmaps(void **state) {
        static vfio_broker_map maps[254];

        assert_int_equal(vfio_broker_container_map(c, ram[0], 0, RAM_SIZE, IOVA(0), 3), 0);
        vfio_broker_unmap u = { IOVA(0), IOVA(254) - IOVA(0) };
        fill_maps(maps, 254, 0);
        assert_int_equal(vfio_broker_container_update(c, &u, 1, ram, 254, maps, 254), -E2BIG);
        assert_string_equal(vfio_broker_error_name(b), "org.freedesktop.DBus.Error.LimitsExceeded");
        printf("# %s\n", vfio_broker_error_message(b));
        assert_int_equal(mappings(), 1);
        assert_container_alive();
        unmap_all(1);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_update_40_fds),
                cmocka_unit_test(test_update_300_fds),
                cmocka_unit_test(test_series_of_maps),
                cmocka_unit_test(test_split_all_or_nothing),
                cmocka_unit_test(test_bad_index),
                cmocka_unit_test(test_too_many_fds_after_unmaps),
        };
        return cmocka_run_group_tests_name("update-fds", tests, setup, teardown);
}
