/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The daemon dies (kill -9) or stops (SIGTERM) and comes back with the fds the harness kept for it, as
 * systemd's fd store does: containers, properties and balloon state are as before, the VMM keeps
 * working on the same connection, a container whose owner left meanwhile is closed, and broken state
 * is torn down without taking the daemon with it. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define MiB (UINT64_C(1) << 20)

static sd_bus *bus;

/* The names in the store other than the state log (state-<generation>), space-separated. */
static const char *stored_besides_log(void) {
        static char out[4096];
        char buf[4096], *p, *save = NULL;

        snprintf(buf, sizeof(buf), "%s", test_harness("fds"));
        out[0] = 0;
        for (p = strtok_r(buf, " ", &save); p; p = strtok_r(NULL, " ", &save))
                if (strncmp(p, "state-", 6) != 0 && strcmp(p, "-") != 0)
                        snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s%s", out[0] ? " " : "", p);
        return out;
}

/* The store hears of removals by datagram, after the reply: wait until only the log is left. */
static void assert_store_empties(void) {
        const char *fds = NULL;

        for (int i = 0; i < 200; i++) {
                fds = stored_besides_log();
                if (fds[0] == 0)
                        return;
                usleep(10 * 1000);
        }
        fail_msg("the fd store still holds %s", fds);
}

typedef struct Snapshot {
        uint32_t groups[8];
        size_t n_groups;
        uint32_t mappings;
        uint64_t bytes, page_sizes;
        bool inhibited;
        uint32_t inhibitors;
        char *owner, *label;
} Snapshot;

static void snapshot(const char *path, Snapshot *s) {
        s->n_groups = test_get_au(bus, path, CONTAINER_IFACE, "Groups", s->groups, 8);
        s->mappings = test_get_u32(bus, path, CONTAINER_IFACE, "Mappings");
        s->bytes = test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes");
        s->page_sizes = test_get_u64(bus, path, CONTAINER_IFACE, "PageSizes");
        s->inhibited = test_get_bool(bus, path, CONTAINER_IFACE, "BalloonInhibited");
        s->inhibitors = test_get_u32(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibitors");
        s->owner = test_get_string(bus, path, CONTAINER_IFACE, "Owner", 's');
        s->label = test_get_string(bus, path, CONTAINER_IFACE, "Label", 's');
}

static void assert_same(const Snapshot *a, const Snapshot *b) {
        assert_int_equal(a->n_groups, b->n_groups);
        assert_memory_equal(a->groups, b->groups, a->n_groups * sizeof(uint32_t));
        assert_int_equal(a->mappings, b->mappings);
        assert_int_equal(a->bytes, b->bytes);
        assert_int_equal(a->page_sizes, b->page_sizes);
        assert_int_equal(a->inhibited, b->inhibited);
        assert_int_equal(a->inhibitors, b->inhibitors);
        assert_string_equal(a->owner, b->owner);
        assert_string_equal(a->label, b->label);
}

static void restart_and_check(const char *how) {
        _cleanup_free_ char *path = test_create_container(bus, "survivor");
        _cleanup_close_ int ram = test_memfd(16 * MiB), ram2 = test_memfd(4 * MiB), device = -EBADF;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Snapshot before, after;
        int fd;

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);
        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 5);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, 1 * MiB, UINT32_C(3));
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, 8 * MiB, 2 * MiB, 16 * MiB, UINT32_C(3));
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram2, UINT64_C(0), 4 * MiB, 32 * MiB, UINT32_C(1));
        test_call_ok(bus, path, CONTAINER_IFACE, "OpenDevice", &reply, "s", "0000:00:05.1");
        assert_true(sd_bus_message_read(reply, "h", &fd) >= 0);
        device = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        reply = sd_bus_message_unref(reply);
        snapshot(path, &before);

        if (strcmp(how, "term") == 0)
                assert_string_equal(test_harness("term"), "exited 0");
        else
                assert_string_equal(test_harness("kill9"), "killed");
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);

        /* Same object, same state, same connection. */
        assert_true(test_object_exists(bus, path));
        snapshot(path, &after);
        assert_same(&before, &after);
        char gpath[64];
        snprintf(gpath, sizeof(gpath), ROOT_PATH "/group/5");
        _cleanup_free_ char *gc = test_get_string(bus, gpath, GROUP_IFACE, "Container", 'o');
        assert_string_equal(gc, path);

        /* The device fd handed out before the restart still holds its group. */
        const char *e = test_call(bus, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", 5);
        assert_non_null(e);
        assert_string_equal(e, "org.vfiobroker.Broker1.Error.Busy");
        device = safe_close(device);
        test_call_ok(bus, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", 5);

        /* The VMM goes on: unmap, map, the mappings' rules as before. */
        e = test_call(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4096ULL, 2 * MiB, UINT32_C(3));
        assert_non_null(e);
        assert_string_equal(e, "org.vfiobroker.Broker1.Error.Overlap");
        test_call_ok(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", 16 * MiB, 2 * MiB);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, 12 * MiB, 2 * MiB, 64 * MiB, UINT32_C(3));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 3);
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_int_equal(test_get_u32(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibitors"), 0);
        free(before.owner); free(before.label); free(after.owner); free(after.label);
}

static void test_kill9_restart(void **state) {
        restart_and_check("kill9");
}

static void test_orderly_restart(void **state) {
        restart_and_check("term");
}

/* The discardable regions and dirty tracking come back too, and go on working. */
static void read_discardable(const char *path, uint64_t r[3]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;

        assert_true(sd_bus_get_property(bus, BUS_NAME, path, CONTAINER_IFACE, "DiscardableRanges", &error, &m,
                                        "a(ttt)") >= 0);
        assert_true(sd_bus_message_enter_container(m, 'a', "(ttt)") >= 0);
        assert_int_equal(sd_bus_message_read(m, "(ttt)", &r[0], &r[1], &r[2]), 1);
        assert_int_equal(sd_bus_message_read(m, "(ttt)", NULL, NULL, NULL), 0);
}

static void test_discard_and_dirty_survive(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "migrating");
        _cleanup_close_ int ram = test_memfd(16 * MiB), bitmap = test_memfd(4096);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t before[3], after[3], dirty = 0;

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 4);
        test_call_ok(bus, path, CONTAINER_IFACE, "MapDiscardable", NULL, "htttutb", ram, 4 * MiB, 8 * MiB, 64 * MiB,
                     UINT32_C(3), 2 * MiB, 0);
        test_call_ok(bus, path, CONTAINER_IFACE, "Populate", NULL, "tt", 66 * MiB, 4 * MiB);
        test_call_ok(bus, path, CONTAINER_IFACE, "StartDirtyTracking", NULL, "");
        read_discardable(path, before);

        assert_string_equal(test_harness("kill9"), "killed");
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);

        read_discardable(path, after);
        assert_memory_equal(before, after, sizeof(before));
        assert_true(test_get_bool(bus, path, CONTAINER_IFACE, "DirtyTracking"));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 2);
        test_call_ok(bus, path, CONTAINER_IFACE, "GetDirtyBitmap", &reply, "tttht", 64 * MiB, 8 * MiB, UINT64_C(4096),
                     bitmap, UINT64_C(0));
        assert_true(sd_bus_message_read(reply, "t", &dirty) > 0);
        assert_int_equal(dirty, 4 * MiB / 4096);
        /* The region's memory came back: its granules populate and discard as before. */
        test_call_ok(bus, path, CONTAINER_IFACE, "Populate", NULL, "tt", 64 * MiB, 8 * MiB);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 4);
        test_call_ok(bus, path, CONTAINER_IFACE, "Discard", NULL, "tt", 66 * MiB, 2 * MiB);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 3);
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
}

/* An owner that leaves while the daemon is down: its container is closed on the way back. */
static void test_owner_left_meanwhile(void **state) {
        int to_parent[2], to_child[2], status;
        char path[256] = {}, c;
        pid_t pid;

        assert_int_equal(pipe(to_parent), 0);
        assert_int_equal(pipe(to_child), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                int ram = test_memfd(4 * MiB);
                char *p = NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *o;
                if (sd_bus_open_system(&b) < 0 ||
                    test_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0) ||
                    sd_bus_message_read(reply, "o", &o) < 0 || !(p = strdup(o)) ||
                    test_call(b, p, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2) ||
                    test_call(b, p, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, UINT64_C(0), UINT32_C(3)))
                        _exit(1);
                (void) !write(to_parent[1], p, strlen(p));
                (void) !read(to_child[0], &c, 1);
                _exit(0); /* leaves while the daemon is down */
        }
        close(to_parent[1]);
        assert_true(read(to_parent[0], path, sizeof(path) - 1) > 0);
        assert_string_equal(test_harness("kill9"), "killed");
        (void) !write(to_child[1], "x", 1);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);

        assert_false(test_object_exists(bus, path));
        assert_int_equal(test_get_u32(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibitors"), 0);
        /* Its fds left the store. */
        assert_string_equal(stored_besides_log(), "");
        _cleanup_free_ char *again = test_create_container(bus, "after");
        test_call_ok(bus, again, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2);
        test_call_ok(bus, again, CONTAINER_IFACE, "Close", NULL, "");
}

/* Corrupt, mismatched or missing state: a clear log line, a safe teardown, a living daemon. The state
 * is the log in the fd store (daemon/state-log.h); the harness damages it, or appends well-formed
 * records that do not fit. */
static void broken_state(const char *what) {
        _cleanup_free_ char *path = test_create_container(bus, "broken");
        _cleanup_close_ int ram = test_memfd(4 * MiB);
        const char *id = strrchr(path, '/') + 1;
        char cmd[256];

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 3);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, UINT64_C(0), UINT32_C(3));
        assert_string_equal(test_harness("kill9"), "killed");

        if (strcmp(what, "corrupt") == 0)
                assert_string_equal(test_harness("log-corrupt"), "corrupted");
        else if (strcmp(what, "mismatched") == 0) {
                snprintf(cmd, sizeof(cmd), "log-head:%s:vfio-type1", id);
                assert_true(strncmp(test_harness(cmd), "appended", 8) == 0);
        } else if (strcmp(what, "bad-mapping") == 0) {
                /* Well-formed, naming memory that was never stored. */
                snprintf(cmd, sizeof(cmd), "log-map:%s:0x10000000:4096:77:0:3", id);
                assert_string_equal(test_harness(cmd), "appended 1");
        } else
                assert_true(strncmp(test_harness("log-drop"), "dropped", 7) == 0); /* fds without state */

        assert_true(strncmp(test_harness("start"), "started", 7) == 0);
        assert_false(test_object_exists(bus, path));
        assert_int_equal(test_get_u32(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibitors"), 0);
        /* Nothing but the new instance's log is left in the store. */
        const char *fds = test_harness("fds");
        assert_true(strncmp(fds, "state-", 6) == 0 && !strchr(fds, ' '));
        /* The group is free and the daemon serves. */
        _cleanup_free_ char *again = test_create_container(bus, "after-broken");
        test_call_ok(bus, again, CONTAINER_IFACE, "AttachGroup", NULL, "u", 3);
        test_call_ok(bus, again, CONTAINER_IFACE, "Close", NULL, "");
}

static void test_corrupt_state(void **state) {
        broken_state("corrupt");
}

static void test_mismatched_state(void **state) {
        broken_state("mismatched");
}

static void test_state_naming_unknown_memory(void **state) {
        broken_state("bad-mapping");
}

static void test_fds_without_state(void **state) {
        broken_state("missing");
}

/* One memfd mapped as several regions (read-only, then writable; then again after it grew) is one open
 * file: systemd keeps one fd per open file and drops a second push of it ("Suppressing duplicate fd"),
 * so storing memory per region lost the container at every restart. */
static void test_one_memfd_several_regions(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "one-file");
        _cleanup_close_ int ram = test_memfd(8 * MiB);

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 2 * MiB, 0 * MiB, UINT32_C(1));
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, 2 * MiB, 2 * MiB, 2 * MiB, UINT32_C(3));
        assert_int_equal(ftruncate(ram, 16 * MiB), 0);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, 12 * MiB, 4 * MiB, 8 * MiB, UINT32_C(3));
        /* The memfd, once (the sim keeps no container fds). */
        _cleanup_free_ char *memory = strdup(stored_besides_log());
        assert_true(memory[0] == 'm' && !strchr(memory, ' '));
        assert_non_null(strstr(test_harness("store"), "suppressed=0 refused=0"));

        assert_string_equal(test_harness("kill9"), "killed");
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);
        assert_true(test_object_exists(bus, path));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 3);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 8 * MiB);
        /* And again: the restored daemon stores nothing twice either. */
        assert_string_equal(test_harness("kill9"), "killed");
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 3);
        assert_non_null(strstr(test_harness("store"), "suppressed=0 refused=0"));
        assert_string_equal(stored_besides_log(), memory);
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_store_empties();
}

/* Killed in the middle of a save, at the moment an fd leaves the store: the state that named it must
 * be gone already, so the next instance restores the container as the last acknowledged (or the
 * interrupted) request left it, never with memory missing. */
static void test_killed_while_saving(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "killed-saving");
        _cleanup_close_ int ram = test_memfd(4 * MiB), ram2 = test_memfd(4 * MiB);

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 4);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, UINT64_C(0), UINT32_C(3));
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram2, UINT64_C(0), 4 * MiB, 32 * MiB, UINT32_C(3));
        assert_string_equal(test_harness("trap-remove"), "armed");
        /* ram2's last mapping goes, and with it ram2's fd: the daemon dies at that removal. */
        (void) test_call(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", 32 * MiB, 4 * MiB);
        assert_string_equal(test_harness("kill9"), "killed");
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);

        assert_true(test_object_exists(bus, path));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 1);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 4 * MiB);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram2, UINT64_C(0), 4 * MiB, 32 * MiB, UINT32_C(3));
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_store_empties();
}

/* FileDescriptorStoreMax=6 (harness --fdstore-max=6): the state log, the next generation of it, and 4
 * memory files. systemd would refuse a fd more without telling the daemon, and the container would be
 * torn down at the next restart. The daemon counts what it has in the store and refuses the Map that
 * needs a fd more, before anything changes. */
static void test_fdstore_full(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "full");
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int ram[5];

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);
        for (int i = 0; i < 5; i++)
                ram[i] = test_memfd(4 * MiB);
        for (int i = 0; i < 4; i++)
                test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram[i], UINT64_C(0), 2 * MiB,
                             (uint64_t) i * 16 * MiB, UINT32_C(3));
        assert_true(sd_bus_call_method(bus, BUS_NAME, path, CONTAINER_IFACE, "Map", &error, NULL, "htttu", ram[4],
                                       UINT64_C(0), 2 * MiB, 64 * MiB, UINT32_C(3)) < 0);
        assert_string_equal(error.name, "org.vfiobroker.Broker1.Error.QuotaExceeded");
        assert_non_null(strstr(error.message, "FileDescriptorStoreMax=6"));
        /* A device end the sim keeps, or a second group, needs a place too: refused before anything
         * changes. */
        TestGroup groups[16];
        size_t n_groups = test_list_groups(bus, groups, 16);
        const char *device = NULL;
        for (size_t i = 0; i < n_groups; i++)
                if (groups[i].id == 1)
                        device = groups[i].device;
        assert_non_null(device);
        sd_bus_error_free(&error);
        assert_true(sd_bus_call_method(bus, BUS_NAME, path, CONTAINER_IFACE, "OpenDevice", &error, NULL, "s",
                                       device) < 0);
        assert_string_equal(error.name, "org.vfiobroker.Broker1.Error.QuotaExceeded");
        assert_non_null(strstr(error.message, "FileDescriptorStoreMax=6"));
        sd_bus_error_free(&error);
        assert_true(sd_bus_call_method(bus, BUS_NAME, path, CONTAINER_IFACE, "AttachGroup", &error, NULL, "u",
                                       UINT32_C(2)) < 0);
        assert_string_equal(error.name, "org.vfiobroker.Broker1.Error.QuotaExceeded");
        _cleanup_free_ char *owner2 = test_get_string(bus, ROOT_PATH "/group/2", GROUP_IFACE, "Container", 'o');
        assert_string_equal(owner2, "/");
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 4);
        /* Nothing changed, and memory the store holds already still maps. */
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 4);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram[0], 2 * MiB, 2 * MiB, 2 * MiB, UINT32_C(3));
        /* A file that leaves the store makes room. */
        test_call_ok(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", 48 * MiB, 2 * MiB);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram[4], UINT64_C(0), 2 * MiB, 64 * MiB, UINT32_C(3));
        assert_non_null(strstr(test_harness("store"), "fds=5 suppressed=0 refused=0"));

        assert_string_equal(test_harness("kill9"), "killed");
        assert_true(strncmp(test_harness("start"), "started", 7) == 0);
        assert_true(test_object_exists(bus, path));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 5);
        /* The restored daemon counts what it found. */
        assert_true(test_call(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram[3], UINT64_C(0), 2 * MiB,
                              48 * MiB, UINT32_C(3)) != NULL);
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_store_empties();
        for (int i = 0; i < 5; i++)
                close(ram[i]);
}

static unsigned store_pushed(void) {
        const char *p = strstr(test_harness("store"), "pushed=");
        assert_non_null(p);
        return (unsigned) strtoul(p + 7, NULL, 10);
}

/* A VMM that unmaps the last range of a memory file and maps it again (Map+Unmap cycles, a virtio-mem
 * granule discarded and populated) costs the service manager one push of the file, not one push and
 * one removal per cycle; and the file still leaves the store a moment after its last range went. */
static void test_remap_cycles_store_once(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "cycles");
        _cleanup_close_ int ram = test_memfd(8 * MiB);
        unsigned before;
        const char *fds = NULL;

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2);
        before = store_pushed();
        for (unsigned i = 0; i < 50; i++) {
                test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 2 * MiB, 0 * MiB,
                             UINT32_C(3));
                test_call_ok(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", 0 * MiB, 2 * MiB);
        }
        assert_int_equal(store_pushed() - before, 1);
        /* Nothing maps it now: it goes (within a second), while the container stays. */
        for (int i = 0; i < 200; i++) {
                fds = stored_besides_log();
                if (fds[0] != 'm' && !strstr(fds, " m"))
                        break;
                usleep(10 * 1000);
        }
        if (fds[0] == 'm' || strstr(fds, " m"))
                fail_msg("a memory file nothing maps stays in the store: %s", fds);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 0);
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_store_empties();
}

static int setup(void **state) {
        bus = test_bus_open();
        return 0;
}

static int teardown(void **state) {
        sd_bus_flush_close_unref(bus);
        return 0;
}

int main(int argc, char *argv[]) {
        const struct CMUnitTest full[] = {
                cmocka_unit_test(test_fdstore_full),
        };
        if (argc > 1 && strcmp(argv[1], "fdstore-full") == 0)
                return cmocka_run_group_tests_name("restart-fdstore-full", full, setup, teardown);

        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_kill9_restart),
                cmocka_unit_test(test_orderly_restart),
                cmocka_unit_test(test_discard_and_dirty_survive),
                cmocka_unit_test(test_owner_left_meanwhile),
                cmocka_unit_test(test_corrupt_state),
                cmocka_unit_test(test_mismatched_state),
                cmocka_unit_test(test_state_naming_unknown_memory),
                cmocka_unit_test(test_fds_without_state),
                cmocka_unit_test(test_one_memfd_several_regions),
                cmocka_unit_test(test_remap_cycles_store_once),
                cmocka_unit_test(test_killed_while_saving),
        };
        return cmocka_run_group_tests_name("restart", tests, setup, teardown);
}
