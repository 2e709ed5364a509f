/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Per-user limits from the configuration (see meson.build for the config): QuotaExceeded names the
 * limit and its value, nothing changes, and everything is released on Close and on a killed owner. */

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

#define MiB (UINT64_C(1) << 20)
#define QUOTA "org.vfiobroker.Broker1.Error.QuotaExceeded"

static sd_bus *bus;

static const char *try_create(sd_bus *b, char **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *p, *e = test_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0);
        if (!e && ret && sd_bus_message_read(reply, "o", &p) >= 0)
                *ret = strdup(p);
        return e;
}

static void expect_quota(sd_bus *b, const char *got, const char *limit) {
        assert_non_null(got);
        assert_string_equal(got, QUOTA);
        (void) b;
        (void) limit;
}

/* The message of the last failing call, for checking that it names the limit. */
static char *last_message(sd_bus *b, const char *path, const char *member, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;
        char *msg;

        assert_true(sd_bus_message_new_method_call(b, &m, BUS_NAME, path,
                                                   strcmp(path, ROOT_PATH) ? CONTAINER_IFACE : MANAGER_IFACE, member) >= 0);
        va_start(ap, types);
        assert_true(sd_bus_message_appendv(m, types, ap) >= 0);
        va_end(ap);
        assert_true(sd_bus_call(b, m, 0, &error, NULL) < 0);
        assert_string_equal(error.name, QUOTA);
        msg = strdup(error.message);
        sd_bus_error_free(&error);
        return msg;
}

static void test_root_limits(void **state) {
        _cleanup_free_ char *c1 = NULL, *c2 = NULL, *c3 = NULL, *msg = NULL;
        _cleanup_close_ int ram = test_memfd(8 * MiB);

        bus = test_bus_open();
        assert_null(try_create(bus, &c1));
        assert_null(try_create(bus, &c2));
        msg = last_message(bus, ROOT_PATH, "CreateContainer", "a{sv}", 0);
        assert_non_null(strstr(msg, "\"containers\""));
        assert_non_null(strstr(msg, "is 2"));
        free(msg);
        msg = NULL;

        test_call_ok(bus, c1, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);
        for (uint64_t i = 0; i < 3; i++)
                test_call_ok(bus, c1, CONTAINER_IFACE, "Map", NULL, "htttu", ram, i * MiB, MiB, i * MiB, UINT32_C(3));
        msg = last_message(bus, c1, "Map", "htttu", ram, 3 * MiB, MiB, 3 * MiB, UINT32_C(3));
        assert_non_null(strstr(msg, "\"mappings\""));
        assert_non_null(strstr(msg, "is 3"));
        free(msg);
        msg = NULL;
        assert_int_equal(test_get_u32(bus, c1, CONTAINER_IFACE, "Mappings"), 3);

        test_call_ok(bus, c1, CONTAINER_IFACE, "Unmap", NULL, "tt", UINT64_C(0), MiB);
        /* 2 MiB pinned + 2 MiB more would exceed pinned_bytes = 3 MiB. */
        msg = last_message(bus, c1, "Map", "htttu", ram, 4 * MiB, 2 * MiB, 4 * MiB, UINT32_C(3));
        assert_non_null(strstr(msg, "\"pinned_bytes\""));
        assert_non_null(strstr(msg, "0x300000"));
        free(msg);
        msg = NULL;
        assert_int_equal(test_get_u64(bus, c1, CONTAINER_IFACE, "MappedBytes"), 2 * MiB);
        test_call_ok(bus, c1, CONTAINER_IFACE, "Map", NULL, "htttu", ram, 4 * MiB, MiB, 4 * MiB, UINT32_C(3));

        /* Close releases the container and its pins. */
        test_call_ok(bus, c1, CONTAINER_IFACE, "Close", NULL, "");
        assert_null(try_create(bus, &c3));
        test_call_ok(bus, c3, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);
        for (uint64_t i = 0; i < 3; i++)
                test_call_ok(bus, c3, CONTAINER_IFACE, "Map", NULL, "htttu", ram, i * MiB, MiB, i * MiB, UINT32_C(3));
        test_call_ok(bus, c3, CONTAINER_IFACE, "Close", NULL, "");
        test_call_ok(bus, c2, CONTAINER_IFACE, "Close", NULL, "");
}

static void test_killed_owner_releases(void **state) {
        int p[2], status;
        pid_t pid;
        char c;
        _cleanup_free_ char *a = NULL, *b2 = NULL;
        _cleanup_close_ int ram = test_memfd(4 * MiB);

        assert_int_equal(pipe(p), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                char *x = NULL, *y = NULL;
                int mem = test_memfd(4 * MiB);
                if (sd_bus_open_system(&b) < 0 || try_create(b, &x) || try_create(b, &y) ||
                    test_call(b, x, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2) ||
                    test_call(b, x, CONTAINER_IFACE, "Map", NULL, "htttu", mem, UINT64_C(0), 3 * MiB, UINT64_C(0), UINT32_C(3)))
                        _exit(1);
                (void) !write(p[1], "x", 1);
                for (;;)
                        pause();
        }
        close(p[1]);
        assert_int_equal(read(p[0], &c, 1), 1);
        close(p[0]);
        /* The child holds everything root may have. */
        expect_quota(bus, try_create(bus, NULL), "containers");
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);

        for (int i = 0; i < 100 && try_create(bus, &a); i++)
                usleep(20000);
        assert_non_null(a);
        assert_null(try_create(bus, &b2));
        test_call_ok(bus, a, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2);
        test_call_ok(bus, a, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 3 * MiB, UINT64_C(0), UINT32_C(3));
        test_call_ok(bus, a, CONTAINER_IFACE, "Close", NULL, "");
        test_call_ok(bus, b2, CONTAINER_IFACE, "Close", NULL, "");
}

/* The unix group "sys" allows one container; "daemon" falls back to the default of three. */
static int containers_allowed(const char *user) {
        struct passwd *pw = getpwnam(user);
        int status;
        pid_t pid;

        assert_non_null(pw);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                int n = 0;
                if (initgroups(user, pw->pw_gid) < 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
                    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0 || sd_bus_open_system(&b) < 0)
                        _exit(100);
                while (n < 10 && !try_create(b, NULL))
                        n++;
                _exit(n);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static void test_group_and_default_limits(void **state) {
        assert_int_equal(containers_allowed("sys"), 1);
        assert_int_equal(containers_allowed("daemon"), 3);
        sd_bus_flush_close_unref(bus);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_root_limits),
                cmocka_unit_test(test_killed_owner_releases),
                cmocka_unit_test(test_group_and_default_limits),
        };
        return cmocka_run_group_tests_name("quota", tests, NULL, NULL);
}
