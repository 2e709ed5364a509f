/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The container logic on the sim backend, without a bus: Map, Unmap, Update and its rollback, quotas,
 * and what the logic reports to its observers. Every refused request must leave everything as it was:
 * mappings, pinned bytes, quota and memory. */

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend-sim.h"
#include "broker.h"
#include "container.h"
#include "quota.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define UID 1000

typedef struct Fixture {
        Broker *broker;
        Container *container;
        int memfd;
        /* What the observers heard. */
        unsigned changed_mask, n_changed_calls, n_removed, n_balloon;
} Fixture;

static void on_changed(void *userdata, Container *c, unsigned mask) {
        Fixture *f = userdata;
        f->changed_mask |= mask;
        f->n_changed_calls++;
}

static void on_removed(void *userdata, Container *c) {
        Fixture *f = userdata;
        f->n_removed++;
}

static void on_balloon(void *userdata, bool flipped) {
        Fixture *f = userdata;
        f->n_balloon++;
}

static const BrokerObserver observer = {
        .container_changed = on_changed,
        .container_removed = on_removed,
        .balloon_changed = on_balloon,
};

static int setup_with(void **state, const char *config_text) {
        Fixture *f = calloc(1, sizeof(Fixture));
        BrokerConfig *config = NULL;
        Backend *backend = NULL;
        BrokerError e = BROKER_ERROR_INIT;

        assert_non_null(f);
        assert_int_equal(broker_config_parse(config_text, &config, &e), 0);
        assert_int_equal(backend_sim_new(config, &backend, &e), 0);
        assert_int_equal(broker_new(NULL, backend, config, &f->broker), 0);
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_int_equal(broker_observe(f->broker, &observer, f), 0);
        assert_int_equal(container_new(f->broker, ":1.42", UID, "vm", &f->container, &e), 0);
        assert_int_equal(container_attach_group(f->container, 1, &e), 0);

        f->memfd = memfd_create("guest-ram", MFD_CLOEXEC);
        assert_true(f->memfd >= 0);
        assert_int_equal(ftruncate(f->memfd, 16 * MiB), 0);
        f->changed_mask = f->n_changed_calls = f->n_balloon = 0;
        *state = f;
        return 0;
}

static int setup(void **state) {
        return setup_with(state, "{\"sim\": {\"dma_entry_limit\": 64}}");
}

static int setup_small_quota(void **state) {
        return setup_with(state, "{\"limits\": {\"default\": {\"mappings\": 3, \"pinned_bytes\": 65536}}}");
}

static int teardown(void **state) {
        Fixture *f = *state;
        broker_free(f->broker);
        close(f->memfd);
        free(f);
        return 0;
}

static uint64_t pinned(Fixture *f) {
        return backend_sim_pinned_bytes(f->broker->backend);
}

static const UserUsage *usage(Fixture *f) {
        return quota_get(f->broker, UID);
}

/* Everything a refused request must leave alone. */
typedef struct Snapshot {
        size_t mappings;
        uint64_t bytes, pinned, quota_mappings, quota_bytes;
} Snapshot;

static Snapshot snapshot(Fixture *f) {
        return (Snapshot) {
                .mappings = container_n_mappings(f->container),
                .bytes = container_mapped_bytes(f->container),
                .pinned = pinned(f),
                .quota_mappings = usage(f)->mappings,
                .quota_bytes = usage(f)->pinned_bytes,
        };
}

static void assert_unchanged(Fixture *f, Snapshot s) {
        Snapshot now = snapshot(f);
        assert_int_equal(now.mappings, s.mappings);
        assert_int_equal(now.bytes, s.bytes);
        assert_int_equal(now.pinned, s.pinned);
        assert_int_equal(now.quota_mappings, s.quota_mappings);
        assert_int_equal(now.quota_bytes, s.quota_bytes);
}

static void test_map_unmap(void **state) {
        Fixture *f = *state;
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(container_map(f->container, f->memfd, 0, 1 * MiB, 0x100000, BROKER_MAP_READ | BROKER_MAP_WRITE,
                                       &e), 0);
        assert_int_equal(container_n_mappings(f->container), 1);
        assert_int_equal(pinned(f), 1 * MiB);
        assert_int_equal(usage(f)->mappings, 1);
        assert_int_equal(usage(f)->pinned_bytes, 1 * MiB);
        assert_true(f->changed_mask & CONTAINER_PROPERTY_MAPPINGS);

        assert_int_equal(container_unmap(f->container, 0x100000, 1 * MiB, &e), 0);
        assert_int_equal(container_n_mappings(f->container), 0);
        assert_int_equal(pinned(f), 0);
        assert_int_equal(usage(f)->mappings, 0);
        assert_int_equal(usage(f)->pinned_bytes, 0);
}

static void test_refused_requests_change_nothing(void **state) {
        Fixture *f = *state;
        BrokerError e;

        assert_int_equal(container_map(f->container, f->memfd, 0, 2 * MiB, 0x200000, BROKER_MAP_READ, NULL), 0);
        Snapshot s = snapshot(f);
        f->n_changed_calls = 0;

        e = BROKER_ERROR_INIT;
        assert_int_equal(container_map(f->container, f->memfd, 0, 4 * KiB, 0x200000, BROKER_MAP_READ, &e), -EEXIST);
        assert_int_equal(e.code, BROKER_ERROR_OVERLAP);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_map(f->container, f->memfd, 0, 4 * KiB + 1, 0x800000, BROKER_MAP_READ, &e), -EFAULT);
        assert_int_equal(e.code, BROKER_ERROR_UNALIGNED);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_map(f->container, f->memfd, 16 * MiB, 4 * KiB, 0x800000, BROKER_MAP_READ, &e),
                         -ERANGE);
        assert_int_equal(e.code, BROKER_ERROR_OUT_OF_RANGE);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_map(f->container, -1, 0, 4 * KiB, 0x800000, BROKER_MAP_READ, &e), -EBADF);
        assert_int_equal(e.code, BROKER_ERROR_BAD_MEMORY);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_unmap(f->container, 0x200000, 1 * MiB, &e), -EXDEV);
        assert_int_equal(e.code, BROKER_ERROR_WOULD_SPLIT);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_unmap(f->container, 0x10000000, 1 * MiB, &e), -ESRCH);
        assert_int_equal(e.code, BROKER_ERROR_NOT_MAPPED);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_unmap(f->container, 0, 0, &e), -EINVAL);
        assert_int_equal(e.code, BROKER_ERROR_INVALID_ARGS);

        assert_unchanged(f, s);
        assert_int_equal(f->n_changed_calls, 0);
}

static void test_update_rollback(void **state) {
        Fixture *f = *state;
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(container_map(f->container, f->memfd, 0, 1 * MiB, 0x100000, BROKER_MAP_READ, NULL), 0);
        assert_int_equal(container_map(f->container, f->memfd, 1 * MiB, 1 * MiB, 0x200000, BROKER_MAP_READ, NULL), 0);
        Snapshot s = snapshot(f);

        /* Unmap both, map one new, then a map that overlaps the new one: all of it is undone. */
        UpdateUnmap unmaps[] = { { 0x100000, 1 * MiB }, { 0x200000, 1 * MiB } };
        UpdateMap maps[] = {
                { .memory = 0, .offset = 2 * MiB, .size = 2 * MiB, .iova = 0x400000, .flags = BROKER_MAP_READ },
                { .memory = 0, .offset = 0, .size = 1 * MiB, .iova = 0x500000, .flags = BROKER_MAP_READ },
        };
        int fds[] = { f->memfd };
        assert_int_equal(container_update(f->container, unmaps, 2, fds, 1, maps, 2, &e), -EEXIST);
        assert_int_equal(e.code, BROKER_ERROR_OVERLAP);
        assert_non_null(strstr(e.message, "Map #1"));
        assert_unchanged(f, s);
        assert_non_null(mapping_table_find(&f->container->mappings, 0x100000));
        assert_non_null(mapping_table_find(&f->container->mappings, 0x200000));
        assert_null(mapping_table_find(&f->container->mappings, 0x400000));

        /* A bad fd index is refused before anything moves. */
        e = BROKER_ERROR_INIT;
        maps[1].memory = 3;
        assert_int_equal(container_update(f->container, unmaps, 2, fds, 1, maps, 2, &e), -EINVAL);
        assert_unchanged(f, s);

        /* And the same Update, valid, moves everything at once with one change report. */
        maps[1] = (UpdateMap) { .memory = 0, .offset = 0, .size = 1 * MiB, .iova = 0x600000, .flags = BROKER_MAP_READ };
        f->n_changed_calls = 0;
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_update(f->container, unmaps, 2, fds, 1, maps, 2, &e), 0);
        assert_int_equal(container_n_mappings(f->container), 2);
        assert_int_equal(pinned(f), 3 * MiB);
        assert_int_equal(usage(f)->pinned_bytes, 3 * MiB);
        assert_int_equal(f->n_changed_calls, 1);
}

/* Update validates each passed fd once, however many maps name it; the access each map needs is still
 * checked per map, and an fd that only a later map names is still checked. */
static void test_update_fd_checked_per_map(void **state) {
        Fixture *f = *state;
        BrokerError e = BROKER_ERROR_INIT;
        char proc[64];
        int ro;

        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", f->memfd);
        ro = open(proc, O_RDONLY | O_CLOEXEC);
        assert_true(ro >= 0);
        Snapshot s = snapshot(f);

        /* A read-only fd: the first map (read) passes, the second (write) of the same fd is refused. */
        UpdateMap maps[] = {
                { .memory = 0, .offset = 0, .size = 1 * MiB, .iova = 0x100000, .flags = BROKER_MAP_READ },
                { .memory = 0, .offset = 1 * MiB, .size = 1 * MiB, .iova = 0x200000,
                  .flags = BROKER_MAP_READ | BROKER_MAP_WRITE },
        };
        int fds[] = { ro, -1 };
        assert_int_equal(container_update(f->container, NULL, 0, fds, 2, maps, 2, &e), -EBADF);
        assert_int_equal(e.code, BROKER_ERROR_BAD_MEMORY);
        assert_non_null(strstr(e.message, "Map #1"));
        assert_non_null(strstr(e.message, "read-only"));
        assert_unchanged(f, s);

        /* The second map names the second fd, which is not valid. */
        e = BROKER_ERROR_INIT;
        maps[1].memory = 1;
        maps[1].flags = BROKER_MAP_READ;
        assert_int_equal(container_update(f->container, NULL, 0, fds, 2, maps, 2, &e), -EBADF);
        assert_int_equal(e.code, BROKER_ERROR_BAD_MEMORY);
        assert_non_null(strstr(e.message, "Map #1"));
        assert_unchanged(f, s);

        /* Both maps reading through the read-only fd pass. */
        e = BROKER_ERROR_INIT;
        maps[1].memory = 0;
        assert_int_equal(container_update(f->container, NULL, 0, fds, 2, maps, 2, &e), 0);
        assert_int_equal(container_n_mappings(f->container), 2);
        assert_int_equal(pinned(f), 2 * MiB);
        close(ro);
}

static void test_quota(void **state) {
        Fixture *f = *state;
        BrokerError e = BROKER_ERROR_INIT;

        /* 64 KiB and 3 mappings for this user. */
        assert_int_equal(container_map(f->container, f->memfd, 0, 32 * KiB, 0x100000, BROKER_MAP_READ, NULL), 0);
        Snapshot s = snapshot(f);
        assert_int_equal(container_map(f->container, f->memfd, 0, 64 * KiB, 0x200000, BROKER_MAP_READ, &e), -EDQUOT);
        assert_int_equal(e.code, BROKER_ERROR_QUOTA_EXCEEDED);
        assert_unchanged(f, s);

        assert_int_equal(container_map(f->container, f->memfd, 0, 4 * KiB, 0x200000, BROKER_MAP_READ, NULL), 0);
        assert_int_equal(container_map(f->container, f->memfd, 0, 4 * KiB, 0x300000, BROKER_MAP_READ, NULL), 0);
        s = snapshot(f);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_map(f->container, f->memfd, 0, 4 * KiB, 0x400000, BROKER_MAP_READ, &e), -EDQUOT);
        assert_non_null(strstr(e.message, "mappings"));
        assert_unchanged(f, s);

        /* Close gives everything back, and the observers hear of it once. */
        container_close(f->container);
        assert_int_equal(f->n_removed, 1);
        assert_int_equal(pinned(f), 0);
        assert_true(!usage(f) || (usage(f)->mappings == 0 && usage(f)->pinned_bytes == 0 && usage(f)->containers == 0));
}

static void test_balloon(void **state) {
        Fixture *f = *state;
        BrokerError e = BROKER_ERROR_INIT;

        /* One inhibitor per attached group; detaching the last one with mappings is refused. */
        assert_int_equal(f->broker->balloon_inhibitors, 1);
        assert_int_equal(container_attach_group(f->container, 2, &e), 0);
        assert_int_equal(f->broker->balloon_inhibitors, 2);
        assert_int_equal(f->n_balloon, 1);
        assert_int_equal(container_map(f->container, f->memfd, 0, 4 * KiB, 0x100000, BROKER_MAP_READ, NULL), 0);
        assert_int_equal(container_detach_group(f->container, 2, &e), 0);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_detach_group(f->container, 1, &e), -EBUSY);
        assert_int_equal(f->broker->balloon_inhibitors, 1);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_map_unmap, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refused_requests_change_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_update_rollback, setup, teardown),
                cmocka_unit_test_setup_teardown(test_update_fd_checked_per_map, setup, teardown),
                cmocka_unit_test_setup_teardown(test_quota, setup_small_quota, teardown),
                cmocka_unit_test_setup_teardown(test_balloon, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
