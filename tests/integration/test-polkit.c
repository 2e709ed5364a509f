/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Authorization with the real polkitd on the private bus (tests/integration/polkit-test.rules):
 * unprivileged clients are allowed by a rule, denied without one, denied for a device the rule does
 * not name, cannot touch another user's container, and are refused once polkitd is gone. Each client
 * is a child process that becomes that user. */

#include <errno.h>
#include <grp.h>
#include <pwd.h>
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

#define ACCESS_DENIED "org.freedesktop.DBus.Error.AccessDenied"

static int failures;

#define CHECK(call, want)                                                                                 \
        do {                                                                                              \
                const char *_g = (call), *_w = (want);                                                    \
                if ((!_g != !_w) || (_g && strcmp(_g, _w) != 0)) {                                        \
                        fprintf(stderr, "%s:%d: %s: expected %s, got %s\n", __FILE__, __LINE__, #call,     \
                                _w ?: "success", _g ?: "success");                                         \
                        failures++;                                                                       \
                }                                                                                         \
        } while (0)

/* Runs fn as user name in a child with its own bus connection; returns the child's failures. */
static int as_user(const char *name, void (*fn)(sd_bus *bus, void *userdata), void *userdata) {
        struct passwd *pw = getpwnam(name);
        int status;
        pid_t pid;

        assert_non_null(pw);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *bus = NULL;
                if (initgroups(name, pw->pw_gid) < 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
                    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0)
                        _exit(100);
                if (sd_bus_open_system(&bus) < 0)
                        _exit(101);
                failures = 0;
                fn(bus, userdata);
                sd_bus_flush_close_unref(bus);
                _exit(failures > 99 ? 99 : failures);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static char *create(sd_bus *bus, const char *label) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *p;
        if (test_call(bus, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 1, "Label", "s", label) ||
            sd_bus_message_read(reply, "o", &p) < 0) {
                failures++;
                return NULL;
        }
        return strdup(p);
}

static void nobody_allowed_for_its_device(sd_bus *bus, void *userdata) {
        _cleanup_free_ char *c = create(bus, "nobody-vm");
        _cleanup_close_ int ram = test_memfd(1 << 20);

        CHECK(test_call(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1), NULL);
        CHECK(test_call(bus, c, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), UINT64_C(1) << 20, UINT64_C(0),
                        UINT32_C(3)), NULL);
        /* The rule names one device: group 2 holds another. */
        CHECK(test_call(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2), ACCESS_DENIED);
        CHECK(test_call(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 5), ACCESS_DENIED);
        CHECK(test_call(bus, c, CONTAINER_IFACE, "Close", NULL, ""), NULL);
}

static void daemon_user_denied(sd_bus *bus, void *userdata) {
        _cleanup_free_ char *c = create(bus, "daemon-vm");

        CHECK(test_call(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1), ACCESS_DENIED);
        CHECK(test_call(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 3), ACCESS_DENIED);
        if (test_get_au(bus, c, CONTAINER_IFACE, "Groups", (uint32_t[4]) {}, 4) != 0)
                failures++;
}

static void sys_group_member_allowed(sd_bus *bus, void *userdata) {
        _cleanup_free_ char *c = create(bus, "sys-vm");

        CHECK(test_call(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 3), NULL);
        CHECK(test_call(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 5), NULL);
        CHECK(test_call(bus, c, CONTAINER_IFACE, "Close", NULL, ""), NULL);
}

static void touch_foreign_container(sd_bus *bus, void *userdata) {
        const char *path = userdata;
        _cleanup_close_ int ram = test_memfd(1 << 20);

        CHECK(test_call(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", UINT64_C(0), UINT64_C(4096)), ACCESS_DENIED);
        CHECK(test_call(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), UINT64_C(4096),
                        UINT64_C(0x100000), UINT32_C(3)), ACCESS_DENIED);
        CHECK(test_call(bus, path, CONTAINER_IFACE, "DetachGroup", NULL, "u", 1), ACCESS_DENIED);
        CHECK(test_call(bus, path, CONTAINER_IFACE, "OpenDevice", NULL, "s", "0000:00:01.0"), ACCESS_DENIED);
        CHECK(test_call(bus, path, CONTAINER_IFACE, "Close", NULL, ""), ACCESS_DENIED);
}

static void test_allowed_by_rule(void **state) {
        assert_int_equal(as_user("nobody", nobody_allowed_for_its_device, NULL), 0);
}

static void test_denied_without_rule(void **state) {
        assert_int_equal(as_user("daemon", daemon_user_denied, NULL), 0);
}

static void test_unix_group_rule(void **state) {
        assert_int_equal(as_user("sys", sys_group_member_allowed, NULL), 0);
}

/* A container held by "nobody" (in a child that waits), attacked by "daemon" and by a second
 * connection of "nobody" itself: only the owning connection may act. */
static void test_foreign_container(void **state) {
        int to_parent[2], to_child[2];
        char path[256] = {};
        pid_t pid;
        int status;
        struct passwd *pw = getpwnam("nobody");

        assert_int_equal(pipe(to_parent), 0);
        assert_int_equal(pipe(to_child), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *bus = NULL;
                char c;
                if (setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 || setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0 ||
                    sd_bus_open_system(&bus) < 0)
                        _exit(1);
                char *p = create(bus, "held");
                if (!p || test_call(bus, p, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1))
                        _exit(2);
                (void) !write(to_parent[1], p, strlen(p));
                close(to_parent[1]);
                (void) !read(to_child[0], &c, 1);
                /* Still intact after the attacks. */
                _exit(test_get_u32(bus, p, CONTAINER_IFACE, "Mappings") == 0 &&
                      test_get_au(bus, p, CONTAINER_IFACE, "Groups", (uint32_t[4]) {}, 4) == 1 ? 0 : 3);
        }
        close(to_parent[1]);
        assert_true(read(to_parent[0], path, sizeof(path) - 1) > 0);

        assert_int_equal(as_user("daemon", touch_foreign_container, path), 0);
        assert_int_equal(as_user("nobody", touch_foreign_container, path), 0);

        (void) !write(to_child[1], "x", 1);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

static void nobody_refused(sd_bus *bus, void *userdata) {
        _cleanup_free_ char *c = create(bus, "no-polkit");
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;

        if (sd_bus_call_method(bus, BUS_NAME, c, CONTAINER_IFACE, "AttachGroup", &error, &reply, "u", 1) >= 0 ||
            !sd_bus_error_has_name(&error, ACCESS_DENIED) || !strstr(error.message, "polkit is not available")) {
                fprintf(stderr, "expected AccessDenied naming polkit, got %s: %s\n", error.name, error.message);
                failures++;
        }
        sd_bus_error_free(&error);
}

/* Last: stops polkitd. */
static void test_fail_closed_without_polkit(void **state) {
        const char *pid = getenv("VFIO_BROKER_POLKIT_PID");
        sd_bus *bus;

        assert_non_null(pid);
        assert_int_equal(kill(atoi(pid), SIGTERM), 0);
        bus = test_bus_open();
        for (int i = 0; i < 100; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                int has = 1;
                if (sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                       "NameHasOwner", NULL, &reply, "s", "org.freedesktop.PolicyKit1") >= 0)
                        (void) sd_bus_message_read(reply, "b", &has);
                if (!has)
                        break;
                usleep(50000);
        }
        assert_int_equal(as_user("nobody", nobody_refused, NULL), 0);

        /* Root needs no polkit. */
        _cleanup_free_ char *c = test_create_container(bus, "root-vm");
        test_call_ok(bus, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);
        test_call_ok(bus, c, CONTAINER_IFACE, "Close", NULL, "");
        sd_bus_flush_close_unref(bus);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_allowed_by_rule),
                cmocka_unit_test(test_denied_without_rule),
                cmocka_unit_test(test_unix_group_rule),
                cmocka_unit_test(test_foreign_container),
                cmocka_unit_test(test_fail_closed_without_polkit),
        };
        return cmocka_run_group_tests_name("polkit", tests, NULL, NULL);
}
