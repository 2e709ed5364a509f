/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libvfio-broker against the real daemon (sim backend) over the private bus: every call, the errno
 * and message of every error path, balloon callbacks, and the teardown when a VMM using the library
 * is killed. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include <vfio-broker/vfio-broker.h>

#define MiB (UINT64_C(1) << 20)

static vfio_broker *b;

static int setup(void **state) {
        return vfio_broker_open(&b) < 0 ? -1 : 0;
}

static int teardown(void **state) {
        vfio_broker_unref(b);
        return 0;
}

static int memfd(uint64_t size) {
        int fd = memfd_create("ram", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        return fd;
}

static void expect(int r, int err, const char *name) {
        if (r != err)
                fail_msg("expected %d (%s), got %d: %s %s", err, name, r, vfio_broker_error_name(b),
                         vfio_broker_error_message(b));
        assert_string_equal(vfio_broker_error_name(b), name);
        /* The broker's words reach the VMM author. */
        assert_true(strlen(vfio_broker_error_message(b)) > 15);
}

static void test_status_and_groups(void **state) {
        vfio_broker_status s;
        vfio_broker_group *g;
        size_t n;

        assert_int_equal(vfio_broker_get_status(b, &s), 0);
        assert_string_equal(s.backend, "sim");
        assert_true(strlen(s.version) > 0);
        assert_false(s.balloon_inhibited);
        assert_int_equal(s.balloon_inhibitors, 0);
        vfio_broker_status_clear(&s);

        assert_int_equal(vfio_broker_list_groups(b, &g, &n), 0);
        assert_int_equal(n, 6);
        assert_int_equal(g[0].id, 1);
        assert_string_equal(g[4].devices[1], "0000:00:05.1");
        assert_false(g[5].viable);
        assert_null(g[0].container);
        vfio_broker_groups_free(g, n);
}

static void test_container_calls(void **state) {
        vfio_broker_container *c;
        vfio_broker_container_info info, *all;
        size_t n;
        int ram = memfd(4 * MiB), dev;
        struct stat st;

        assert_int_equal(vfio_broker_container_new(b, "lib-vm", &c), 0);
        assert_non_null(strstr(vfio_broker_container_get_path(c), "/container/"));
        assert_int_equal(vfio_broker_container_attach_group(c, 2), 0);
        assert_int_equal(vfio_broker_container_attach_group(c, 5), 0);
        assert_int_equal(vfio_broker_container_map(c, ram, 0, 2 * MiB, 2 * MiB, VFIO_BROKER_MAP_READ | VFIO_BROKER_MAP_WRITE), 0);
        assert_int_equal(vfio_broker_container_map(c, ram, 2 * MiB, 2 * MiB, 8 * MiB, VFIO_BROKER_MAP_READ), 0);

        dev = vfio_broker_container_open_device(c, "0000:00:05.1");
        assert_true(dev >= 0);
        assert_int_equal(fstat(dev, &st), 0);
        assert_true(fcntl(dev, F_GETFD) & FD_CLOEXEC);

        assert_int_equal(vfio_broker_container_get_info(c, &info), 0);
        assert_string_equal(info.label, "lib-vm");
        assert_int_equal(info.uid, getuid());
        assert_int_equal(info.n_groups, 2);
        assert_int_equal(info.groups[0], 2);
        assert_int_equal(info.groups[1], 5);
        assert_int_equal(info.mappings, 2);
        assert_int_equal(info.mapped_bytes, 4 * MiB);
        assert_true(info.balloon_inhibited);
        assert_int_equal(info.n_iova_ranges, 2);
        assert_int_equal(info.iova_ranges[0].last, 0xfedfffff);
        assert_int_equal(info.page_sizes, 0x40201000);
        vfio_broker_container_info_clear(&info);

        /* Everyone's containers, and one by id. */
        assert_int_equal(vfio_broker_list_containers(b, &all, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(all[0].path, vfio_broker_container_get_path(c));
        const char *id = strrchr(all[0].path, '/') + 1;
        assert_int_equal(vfio_broker_get_container_info(b, id, &info), 0);
        assert_int_equal(info.mappings, 2);
        vfio_broker_container_info_clear(&info);
        vfio_broker_container_infos_free(all, n);

        /* Each broker error arrives as its errno with the broker's message. */
        expect(vfio_broker_container_detach_group(c, 5), -EBUSY, "org.vfiobroker.Broker1.Error.Busy");
        close(dev);
        assert_int_equal(vfio_broker_container_detach_group(c, 5), 0);
        expect(vfio_broker_container_attach_group(c, 99), -ENOENT, "org.vfiobroker.Broker1.Error.NoSuchGroup");
        expect(vfio_broker_container_attach_group(c, 6), -EPERM, "org.vfiobroker.Broker1.Error.NotViable");
        expect(vfio_broker_container_open_device(c, "0000:00:09.0"), -ENODEV, "org.vfiobroker.Broker1.Error.NoSuchDevice");
        expect(vfio_broker_container_map(c, ram, 0, 4096, 2 * MiB, 3), -EEXIST, "org.vfiobroker.Broker1.Error.Overlap");
        expect(vfio_broker_container_map(c, ram, 0, 4096, 0xfee00000, 3), -ERANGE, "org.vfiobroker.Broker1.Error.OutOfRange");
        expect(vfio_broker_container_map(c, ram, 0, 4096, 0x10000800, 3), -EFAULT, "org.vfiobroker.Broker1.Error.Unaligned");
        expect(vfio_broker_container_map(c, ram, 0, 4096, 0x10000000, 0), -EINVAL, "org.freedesktop.DBus.Error.InvalidArgs");
        expect(vfio_broker_container_map(c, open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC), 0, 4096, 0x10000000, 1), -EBADF,
               "org.vfiobroker.Broker1.Error.BadMemory");
        expect(vfio_broker_container_unmap(c, 3 * MiB, 4096), -EXDEV, "org.vfiobroker.Broker1.Error.WouldSplit");
        expect(vfio_broker_container_unmap(c, 64 * MiB, 4096), -ESRCH, "org.vfiobroker.Broker1.Error.NotMapped");
        expect(vfio_broker_container_detach_group(c, 2), -EBUSY, "org.vfiobroker.Broker1.Error.Busy");
        expect(vfio_broker_get_container_info(b, "x7", &info), -EINVAL, "org.freedesktop.DBus.Error.InvalidArgs");
        assert_true(vfio_broker_get_container_info(b, "987654", &info) < 0);
        assert_string_equal(vfio_broker_error_name(b), "org.freedesktop.DBus.Error.UnknownObject");

        assert_int_equal(vfio_broker_container_unmap(c, 0, 16 * MiB), 0);
        assert_int_equal(vfio_broker_container_detach_group(c, 2), 0);

        vfio_broker_container *empty;
        assert_int_equal(vfio_broker_container_new(b, NULL, &empty), 0);
        expect(vfio_broker_container_map(empty, ram, 0, 4096, 0, 3), -ENXIO, "org.vfiobroker.Broker1.Error.NoGroups");
        assert_int_equal(vfio_broker_close_container(b, vfio_broker_container_get_path(empty)), 0);
        vfio_broker_container_free(empty);

        assert_int_equal(vfio_broker_container_close(c), 0);
        close(ram);
}

typedef struct Seen {
        int manager_calls;
        bool last_inhibited;
        uint32_t last_inhibitors;
        int container_calls;
        bool container_inhibited;
} Seen;

static void on_manager(vfio_broker *broker, bool inhibited, uint32_t inhibitors, void *userdata) {
        Seen *s = userdata;
        s->manager_calls++;
        s->last_inhibited = inhibited;
        s->last_inhibitors = inhibitors;
}

static void on_container(vfio_broker_container *c, bool inhibited, void *userdata) {
        Seen *s = userdata;
        s->container_calls++;
        s->container_inhibited = inhibited;
}

static void wait_for(int *counter, int value) {
        for (int i = 0; i < 500 && *counter < value; i++) {
                struct pollfd p = { .fd = vfio_broker_get_fd(b), .events = (short) vfio_broker_get_events(b) };
                while (vfio_broker_process(b) > 0)
                        ;
                if (*counter < value)
                        (void) poll(&p, 1, 10);
        }
}

static void test_balloon_callbacks_with_sd_event(void **state) {
        sd_event *event = NULL;
        vfio_broker *watcher;
        vfio_broker_container *c;
        Seen seen = {};

        /* A second connection watches from an sd-event loop while the first one acts. */
        assert_int_equal(vfio_broker_open(&watcher), 0);
        assert_int_equal(sd_event_new(&event), 0);
        assert_int_equal(vfio_broker_attach_event(watcher, event, 0), 0);
        assert_int_equal(vfio_broker_watch_balloon(watcher, on_manager, &seen), 0);
        for (int i = 0; i < 20; i++)
                (void) sd_event_run(event, 10000); /* let the match be installed */

        assert_int_equal(vfio_broker_container_new(b, "watched", &c), 0);
        assert_int_equal(vfio_broker_container_watch_balloon(c, on_container, &seen), 0);
        assert_int_equal(vfio_broker_container_attach_group(c, 3), 0);
        for (int i = 0; i < 200 && seen.manager_calls == 0; i++)
                (void) sd_event_run(event, 10000);
        assert_true(seen.manager_calls >= 1);
        assert_true(seen.last_inhibited);
        assert_int_equal(seen.last_inhibitors, 1);

        /* The acting connection's own container callback, driven by hand. Signals come on the bus while
         * the calls went over the peer connection, so they may trail the reply: wait for them. */
        wait_for(&seen.container_calls, 1);
        assert_int_equal(seen.container_calls, 1);
        assert_true(seen.container_inhibited);

        assert_int_equal(vfio_broker_container_detach_group(c, 3), 0);
        for (int i = 0; i < 200 && seen.last_inhibited; i++)
                (void) sd_event_run(event, 10000);
        assert_false(seen.last_inhibited);
        assert_int_equal(seen.last_inhibitors, 0);
        wait_for(&seen.container_calls, 2);
        assert_int_equal(seen.container_calls, 2);
        assert_false(seen.container_inhibited);

        assert_int_equal(vfio_broker_container_close(c), 0);
        vfio_broker_unref(watcher);
        sd_event_unref(event);
}

static void test_open_with_bus(void **state) {
        sd_bus *bus = NULL;
        vfio_broker *mine;
        vfio_broker_container *c;

        assert_int_equal(sd_bus_open_system(&bus), 0);
        assert_int_equal(vfio_broker_open_with_bus(bus, &mine), 0);
        assert_int_equal(vfio_broker_container_new(mine, "shared-bus", &c), 0);
        vfio_broker_container_free(c);
        /* Dropping the handle leaves the VMM's own connection, and so its container, alone. */
        vfio_broker_unref(mine);
        assert_true(sd_bus_is_open(bus) > 0);
        vfio_broker_container_info *all;
        size_t n;
        assert_int_equal(vfio_broker_list_containers(b, &all, &n), 0);
        assert_int_equal(n, 1);
        vfio_broker_container_infos_free(all, n);
        sd_bus_flush_close_unref(bus);
        for (int i = 0; i < 100; i++) {
                assert_int_equal(vfio_broker_list_containers(b, &all, &n), 0);
                vfio_broker_container_infos_free(all, n);
                if (n == 0)
                        break;
                usleep(20000);
        }
        assert_int_equal(n, 0);
}

static void test_killed_vmm(void **state) {
        int p[2];
        pid_t pid;
        char c;

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                vfio_broker *vb;
                vfio_broker_container *ct;
                int ram = memfd_create("ram", MFD_CLOEXEC);
                if (ram < 0 || ftruncate(ram, 8 * MiB) < 0 || vfio_broker_open(&vb) < 0 ||
                    vfio_broker_container_new(vb, "killed", &ct) < 0 || vfio_broker_container_attach_group(ct, 4) < 0 ||
                    vfio_broker_container_map(ct, ram, 0, 8 * MiB, 0, 3) < 0 ||
                    vfio_broker_container_open_device(ct, "0000:00:04.0") < 0)
                        _exit(1);
                (void) !write(p[1], "x", 1);
                for (;;)
                        pause();
        }
        close(p[1]);
        assert_int_equal(read(p[0], &c, 1), 1);
        close(p[0]);

        vfio_broker_status s;
        assert_int_equal(vfio_broker_get_status(b, &s), 0);
        assert_int_equal(s.balloon_inhibitors, 1);
        vfio_broker_status_clear(&s);

        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        for (int i = 0; i < 100; i++) {
                assert_int_equal(vfio_broker_get_status(b, &s), 0);
                uint32_t n = s.balloon_inhibitors;
                vfio_broker_status_clear(&s);
                if (n == 0)
                        break;
                usleep(20000);
        }
        vfio_broker_group *g;
        size_t n;
        assert_int_equal(vfio_broker_list_groups(b, &g, &n), 0);
        assert_null(g[3].container);
        vfio_broker_groups_free(g, n);
        vfio_broker_container *again;
        assert_int_equal(vfio_broker_container_new(b, "again", &again), 0);
        assert_int_equal(vfio_broker_container_attach_group(again, 4), 0);
        assert_int_equal(vfio_broker_container_close(again), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_status_and_groups),
                cmocka_unit_test(test_container_calls),
                cmocka_unit_test(test_balloon_callbacks_with_sd_event),
                cmocka_unit_test(test_open_with_bus),
                cmocka_unit_test(test_killed_vmm),
        };
        return cmocka_run_group_tests_name("libvfio-broker", tests, setup, teardown);
}
