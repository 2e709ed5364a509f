/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The sim backend's rules, which must be the kernel's (tests/vm holds both to the same contract): every
 * refusal is the errno the kernel gives for it (backend.h), through the wrappers the logic uses. */

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend-sim.h"
#include "config.h"

#define MiB (UINT64_C(1) << 20)

typedef struct Fixture {
        BrokerConfig *config;
        Backend *backend;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(broker_config_parse("{\"sim\": {\"dma_entry_limit\": 8}}", &f->config, &e), 0);
        assert_int_equal(backend_sim_new(f->config, &f->backend, &e), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        backend_free(f->backend);
        broker_config_free(f->config);
        free(f);
        return 0;
}

static BackendContainer *new_container(Fixture *f) {
        BackendContainer *c = NULL;
        assert_int_equal(backend_container_new(f->backend, &c), 0);
        return c;
}

static void test_groups(void **state) {
        Fixture *f = *state;
        BackendGroupInfo *infos;
        size_t n;

        assert_string_equal(backend_name(f->backend), "sim");
        assert_int_equal(backend_list_groups(f->backend, &infos, &n), 0);
        assert_int_equal(n, 6);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(infos[i].id, i + 1);
        assert_string_equal(infos[4].devices[1], "0000:00:05.1");
        assert_false(infos[5].viable);
        backend_group_info_free_many(infos, n);

        BackendGroupInfo one = {};
        assert_int_equal(backend_get_group(f->backend, 2, &one), 0);
        assert_true(one.viable);
        strv_free(one.devices);
        assert_int_equal(backend_get_group(f->backend, 77, &one), -ENOENT);
}

static void test_attach_rules(void **state) {
        Fixture *f = *state;
        BackendContainer *a = new_container(f), *b = new_container(f);
        BackendIommuInfo info = {};

        /* No IOMMU before the first group. */
        assert_int_equal(backend_container_get_iommu_info(a, &info), -EINVAL);
        assert_int_equal(backend_container_map(a, 0x10000000, 0, 4096, 3), -EINVAL);
        assert_int_equal(backend_container_unmap(a, 0, 4096, NULL), -EINVAL);
        assert_int_equal(backend_container_set_dirty_tracking(a, true), -EINVAL);
        assert_int_equal(backend_container_detach_group(a, 1), -EINVAL);  /* in no container */

        assert_int_equal(backend_container_attach_group(a, 1), 0);
        assert_int_equal(backend_container_attach_group(a, 1), -EBUSY);   /* twice: the group fd is open */
        assert_int_equal(backend_container_attach_group(b, 1), -EBUSY);   /* one container per group */
        assert_int_equal(backend_container_attach_group(b, 6), -EPERM);   /* not viable */
        assert_int_equal(backend_container_attach_group(b, 99), -ENOENT); /* no such group */

        assert_int_equal(backend_container_get_iommu_info(a, &info), 0);
        assert_int_equal(info.n_ranges, 2);
        assert_int_equal(info.ranges[0].last, 0xfedfffff);
        assert_int_equal(info.ranges[1].first, 0xfef00000);
        assert_int_equal(info.page_sizes, 0x40201000);
        assert_int_equal(info.dma_available, 8);
        backend_iommu_info_done(&info);

        assert_int_equal(backend_container_detach_group(b, 1), -EINVAL);  /* not in b */
        backend_container_free(a);
        assert_int_equal(backend_container_attach_group(b, 1), 0);        /* free again */
        backend_container_free(b);
}

static void test_map_rules(void **state) {
        Fixture *f = *state;
        BackendContainer *c = new_container(f);
        uint64_t unmapped = 0;
        const uint64_t va = 0x7f0000000000;

        assert_int_equal(backend_container_attach_group(c, 2), 0);

        assert_int_equal(backend_container_map(c, va, 0, 0, 3), -EINVAL);             /* size 0 */
        assert_int_equal(backend_container_map(c, va, 0, 4096, 0), -EINVAL);          /* no flags */
        assert_int_equal(backend_container_map(c, va, 0, 4096, 4), -EINVAL);          /* unknown flag */
        assert_int_equal(backend_container_map(c, va + 1, 0, 4096, 3), -EINVAL);      /* vaddr */
        assert_int_equal(backend_container_map(c, va, 0x800, 4096, 3), -EINVAL);      /* iova */
        assert_int_equal(backend_container_map(c, va, 0, 4095, 3), -EINVAL);          /* size */
        assert_int_equal(backend_container_map(c, va, 0xfee00000, 4096, 3), -EINVAL); /* MSI window */
        assert_int_equal(backend_container_map(c, va, 0xfed00000, 0x200000, 3), -EINVAL); /* straddles it */
        assert_int_equal(backend_container_map(c, va, 0x8000000000, 4096, 3), -EINVAL);  /* above 39 bits */
        assert_int_equal(backend_container_map(c, va, UINT64_MAX - 4095, 8192, 3), -EINVAL); /* wraps */
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 0);

        assert_int_equal(backend_container_map(c, va, 2 * MiB, 2 * MiB, 3), 0);
        assert_int_equal(backend_container_map(c, va, 3 * MiB, 4096, 3), -EEXIST);     /* inside */
        assert_int_equal(backend_container_map(c, va, 1 * MiB, 2 * MiB, 3), -EEXIST);  /* across its start */
        assert_int_equal(backend_container_map(c, va, 0, 8 * MiB, 3), -EEXIST);        /* around it */
        assert_int_equal(backend_container_map(c, va, 4 * MiB, 2 * MiB, 1), 0);       /* touching is fine */
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 4 * MiB);
        /* After a restart the same mapping is repointed, not mapped twice; as a new mapping, it overlaps. */
        assert_int_equal(backend_container_restore_mapping(c, va, 2 * MiB, 2 * MiB, 3), -EEXIST);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 4 * MiB);

        /* type1v2: no partial unmap; an empty range unmaps nothing, successfully. */
        assert_int_equal(backend_container_unmap(c, 3 * MiB, 2 * MiB, &unmapped), -EINVAL);
        assert_int_equal(backend_container_unmap(c, 1 * MiB, 2 * MiB, &unmapped), -EINVAL);
        assert_int_equal(backend_container_unmap(c, 2 * MiB, 4095, &unmapped), -EINVAL);   /* unaligned */
        assert_int_equal(backend_container_unmap(c, 2 * MiB, 0, &unmapped), -EINVAL);      /* empty */
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 4 * MiB);
        assert_int_equal(backend_container_unmap(c, 64 * MiB, 2 * MiB, &unmapped), 0);
        assert_int_equal(unmapped, 0);
        assert_int_equal(backend_container_unmap(c, 0, 8 * MiB, &unmapped), 0);
        assert_int_equal(unmapped, 4 * MiB);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 0);

        /* The entry limit (8 here, 65535 by default) is ENOSPC. */
        for (uint64_t i = 0; i < 8; i++)
                assert_int_equal(backend_container_map(c, va, i * 4096, 4096, 3), 0);
        assert_int_equal(backend_container_map(c, va, 8 * 4096, 4096, 3), -ENOSPC);
        assert_int_equal(backend_container_restore_mapping(c, va, 8 * 4096, 4096, 3), -ENOSPC);
        /* The limit is checked after the rules: an overlap is still EEXIST. */
        assert_int_equal(backend_container_map(c, va, 0, 4096, 3), -EEXIST);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 8 * 4096);
        BackendIommuInfo info = {};
        assert_int_equal(backend_container_get_iommu_info(c, &info), 0);
        assert_int_equal(info.dma_available, 0);
        backend_iommu_info_done(&info);

        /* The last group leaving releases the IOMMU and every mapping with it, as the kernel does. */
        assert_int_equal(backend_container_detach_group(c, 2), 0);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 0);
        assert_int_equal(backend_container_map(c, va, 0, 4096, 3), -EINVAL);
        backend_container_free(c);
}

static bool hung_up(int fd) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        return poll(&p, 1, 0) > 0 && (p.revents & POLLHUP);
}

static void test_device_fds(void **state) {
        Fixture *f = *state;
        BackendContainer *a = new_container(f), *b = new_container(f);
        int fd, copy;

        assert_int_equal(backend_container_attach_group(a, 5), 0);
        assert_int_equal(backend_container_open_device(a, 5, "0000:00:01.0"), -ENODEV); /* not in group 5 */
        assert_int_equal(backend_container_open_device(a, 4, "0000:00:04.0"), -EINVAL); /* group not attached */
        assert_int_equal(backend_sim_open_device_fds(f->backend, 5), 0);

        fd = backend_container_open_device(a, 5, "0000:00:05.1");
        assert_true(fd >= 0);
        assert_false(hung_up(fd));
        copy = dup(fd);
        assert_int_equal(backend_sim_open_device_fds(f->backend, 5), 1);

        /* Busy while any copy of the VMM's fd is open. */
        assert_int_equal(backend_container_detach_group(a, 5), -EBUSY);
        close(fd);
        assert_int_equal(backend_container_detach_group(a, 5), -EBUSY);
        close(copy);
        assert_int_equal(backend_sim_open_device_fds(f->backend, 5), 0);
        assert_int_equal(backend_container_detach_group(a, 5), 0);

        /* A closed container's device fd keeps the group busy until the VMM closes it. */
        assert_int_equal(backend_container_attach_group(a, 5), 0);
        fd = backend_container_open_device(a, 5, "0000:00:05.0");
        assert_true(fd >= 0);
        backend_container_free(a);
        assert_int_equal(backend_container_attach_group(b, 5), -EBUSY);
        assert_int_equal(backend_container_attach_group(b, 5), -EBUSY); /* as often as asked */
        close(fd);
        assert_int_equal(backend_container_attach_group(b, 5), 0);
        backend_container_free(b);
}

/* type1's dirty bitmap without a device that reports its own writes: every mapped page, bit for page
 * from the range's start; tracking and the smallest page size are required, as in the kernel. */
static void test_dirty_bitmap(void **state) {
        Fixture *f = *state;
        BackendContainer *c = new_container(f);
        uint64_t bitmap[4] = {}, unmapped = 0;

        assert_int_equal(backend_container_attach_group(c, 1), 0);
        assert_int_equal(backend_container_map(c, 0x10000, 0x100000, 3 * 4096, 3), 0);
        assert_int_equal(backend_container_map(c, 0x20000, 0x100000 + 65 * 4096, 4096, 3), 0);
        assert_int_equal(backend_container_dirty_bitmap(c, 0x100000, 128 * 4096, 4096, bitmap), -EINVAL);
        assert_int_equal(backend_container_unmap_dirty(c, 0x100000, 3 * 4096, 4096, bitmap, &unmapped), -EINVAL);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 4 * 4096); /* refused: still mapped */
        assert_int_equal(backend_container_set_dirty_tracking(c, true), 0);
        assert_int_equal(backend_container_dirty_bitmap(c, 0x100000, 128 * 4096, 2 * MiB, bitmap), -EINVAL);
        assert_int_equal(backend_container_dirty_bitmap(c, 0x101000, 4096, 4096, bitmap), -EINVAL);
        assert_int_equal(backend_container_dirty_bitmap(c, 0x100000, 0, 4096, bitmap), -EINVAL);
        assert_int_equal(backend_container_unmap_dirty(c, 0x100000, 3 * 4096, 2 * MiB, bitmap, &unmapped), -EINVAL);
        assert_int_equal(backend_container_unmap_dirty(c, 0x101000, 4096, 4096, bitmap, &unmapped), -EINVAL);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 4 * 4096);
        assert_int_equal(bitmap[0] | bitmap[1] | bitmap[2] | bitmap[3], 0); /* nothing reported */
        assert_int_equal(backend_container_dirty_bitmap(c, 0x100000, 128 * 4096, 4096, bitmap), 0);
        assert_int_equal(bitmap[0], 0x7);
        assert_int_equal(bitmap[1], 0x2);
        memset(bitmap, 0, sizeof(bitmap));
        assert_int_equal(backend_container_unmap_dirty(c, 0x100000 + 64 * 4096, 64 * 4096, 4096, bitmap, &unmapped),
                         0);
        assert_int_equal(unmapped, 4096);
        assert_int_equal(bitmap[0], 0x2);
        /* The IOMMU, and with it the tracking, goes with the last group. */
        assert_int_equal(backend_container_unmap(c, 0x100000, 3 * 4096, NULL), 0);
        assert_int_equal(backend_container_detach_group(c, 1), 0);
        assert_int_equal(backend_container_attach_group(c, 1), 0);
        assert_int_equal(backend_container_dirty_bitmap(c, 0x100000, 4096, 4096, bitmap), -EINVAL);
        backend_container_free(c);
}

/* The reset scope is the PCI bus; a root-bus device has none; every touched group must be given. */
static void test_hot_reset(void **state) {
        BrokerConfig *config = NULL;
        Backend *backend = NULL;
        BackendContainer *a = NULL, *b = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        unsigned *groups = NULL;
        size_t n = 0;

        assert_int_equal(broker_config_parse("{\"sim\": {\"groups\": [{\"id\": 1, \"devices\": [\"0000:00:01.0\"]}, "
                                             "{\"id\": 7, \"devices\": [\"0000:05:00.0\"]}, "
                                             "{\"id\": 8, \"devices\": [\"0000:05:00.1\", \"0000:06:00.0\"]}]}}",
                                             &config, &e), 0);
        assert_int_equal(backend_sim_new(config, &backend, &e), 0);
        assert_int_equal(backend_container_new(backend, &a), 0);
        assert_int_equal(backend_container_new(backend, &b), 0);
        assert_int_equal(backend_container_attach_group(a, 1), 0);
        assert_int_equal(backend_container_attach_group(a, 7), 0);

        /* A root-bus device has no bus reset: ENODEV, as VFIO_DEVICE_GET_PCI_HOT_RESET_INFO says. */
        assert_int_equal(backend_container_hot_reset_groups(a, 1, "0000:00:01.0", &groups, &n), -ENODEV);
        assert_int_equal(backend_container_hot_reset(a, 1, "0000:00:01.0", (BackendContainer *[]) { a },
                                                     (unsigned[]) { 1 }, 1), -ENODEV);
        assert_int_equal(backend_container_hot_reset_groups(b, 7, "0000:05:00.0", &groups, &n), -EINVAL); /* not b's */
        assert_int_equal(backend_container_hot_reset_groups(a, 7, "0000:05:00.0", &groups, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(groups[0], 7);
        assert_int_equal(groups[1], 8);
        free(groups);

        unsigned only7[] = { 7 }, both[] = { 7, 8 };
        BackendContainer *owners_a[] = { a }, *owners_ab[] = { a, b };
        assert_int_equal(backend_container_hot_reset(a, 7, "0000:05:00.0", owners_a, only7, 1), -EINVAL);
        /* Group 8 given, but not in the container claimed for it. */
        assert_int_equal(backend_container_hot_reset(a, 7, "0000:05:00.0", owners_ab, both, 2), -EINVAL);
        assert_int_equal(backend_container_attach_group(b, 8), 0);
        assert_int_equal(backend_container_hot_reset(a, 7, "0000:05:00.0", owners_ab, both, 2), 0);

        backend_container_free(a);
        backend_container_free(b);
        backend_free(backend);
        broker_config_free(config);
}

/* restore_container() keeps a BrokerError: it runs at startup, for the log. A group now in another
 * container cannot come back; a restored container holds its groups as an attach would. */
static void test_restore(void **state) {
        Fixture *f = *state;
        BackendContainer *a = new_container(f), *r = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        const unsigned groups[] = { 2 };
        const uint64_t va = 0x7f0000000000;

        assert_int_equal(backend_container_attach_group(a, 2), 0);
        assert_true(backend_container_restore(f->backend, NULL, 0, groups, 1, &r, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_NO_SUCH_GROUP);
        assert_non_null(strstr(e.message, "2"));
        assert_null(r);
        backend_container_free(a);

        assert_int_equal(backend_container_restore(f->backend, NULL, 0, groups, 1, &r, NULL), 0);
        assert_int_equal(backend_container_restore_mapping(r, va, 0, 4096, 3), 0);
        assert_int_equal(backend_container_restore_mapping(r, va, 0x800, 4096, 3), -EINVAL);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 4096);
        assert_int_equal(backend_container_invalidate_vaddr(r, 0, 4096), 0);
        a = new_container(f);
        assert_int_equal(backend_container_attach_group(a, 2), -EBUSY);
        backend_container_free(a);
        backend_container_free(r);
        assert_int_equal(backend_sim_pinned_bytes(f->backend), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_groups, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_rules, setup, teardown),
                cmocka_unit_test_setup_teardown(test_map_rules, setup, teardown),
                cmocka_unit_test_setup_teardown(test_device_fds, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dirty_bitmap, setup, teardown),
                cmocka_unit_test(test_hot_reset),
                cmocka_unit_test_setup_teardown(test_restore, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
