/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* While polkit takes its time over one client's AttachGroup, the broker keeps serving everybody else
 * (python3-dbusmock's polkitd template, told to hang). No timing: the hanging call provably has not
 * returned while the other calls complete, and completes once polkit answers. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define MOCK_PATH "/org/freedesktop/PolicyKit1/Authority"

static void polkit_mock(sd_bus *bus, const char *member, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;

        assert_true(sd_bus_message_new_method_call(bus, &m, "org.freedesktop.PolicyKit1", MOCK_PATH,
                                                   "org.freedesktop.DBus.Mock", member) >= 0);
        va_start(ap, types);
        assert_true(sd_bus_message_appendv(m, types, ap) >= 0);
        va_end(ap);
        if (sd_bus_call(bus, m, 0, &error, NULL) < 0)
                fail_msg("mock %s: %s", member, error.message);
}

static bool mock_has_hanging_calls(sd_bus *bus) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int b = 0;
        assert_true(sd_bus_call_method(bus, "org.freedesktop.PolicyKit1", MOCK_PATH, "org.freedesktop.DBus.Mock",
                                       "HaveHangingCalls", NULL, &reply, "") >= 0);
        assert_true(sd_bus_message_read(reply, "b", &b) >= 0);
        return b;
}

static void test_slow_polkit_does_not_stall(void **state) {
        sd_bus *bus = test_bus_open();
        int status;
        pid_t pid;

        polkit_mock(bus, "SetAllowed", "as", 1, "org.vfiobroker.broker1.attach-group");
        polkit_mock(bus, "SimulateHang", "b", 1);

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *c;
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                        _exit(10);
                if (test_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0) ||
                    sd_bus_message_read(reply, "o", &c) < 0 || !(c = strdup(c)))
                        _exit(11);
                /* Blocks until polkit answers. */
                _exit(test_call(b, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1) ? 12 : 0);
        }

        /* Wait until the broker's question is hanging in polkit. */
        for (int i = 0; i < 200 && !mock_has_hanging_calls(bus); i++)
                usleep(20000);
        assert_true(mock_has_hanging_calls(bus));

        /* Everybody else is served meanwhile. */
        _cleanup_free_ char *other = test_create_container(bus, "served-meanwhile");
        test_call_ok(bus, other, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2);
        test_call_ok(bus, ROOT_PATH, "org.freedesktop.DBus.Peer", "Ping", NULL, "");
        assert_int_equal(test_get_u32(bus, ROOT_PATH, MANAGER_IFACE, "BalloonInhibitors"), 1);
        test_call_ok(bus, other, CONTAINER_IFACE, "Close", NULL, "");
        /* ... and the slow caller still waits. */
        assert_int_equal(waitpid(pid, &status, WNOHANG), 0);

        polkit_mock(bus, "ReleaseHangingCalls", "");
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        sd_bus_flush_close_unref(bus);
}

typedef struct Flood {
        unsigned replies, flood_denied, other_errors;
} Flood;

static int on_flood_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Flood *f = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);

        f->replies++;
        if (e && strcmp(e->name, "org.freedesktop.DBus.Error.AccessDenied") == 0 && strstr(e->message, "waiting for polkit"))
                f->flood_denied++;
        else
                f->other_errors++;
        return 0;
}

/* As uid, creates a container and calls AttachGroup(group) on it, blocking. */
static pid_t attach_as(uid_t uid, unsigned group) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *c;
                if (setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0 || sd_bus_open_system(&b) < 0)
                        _exit(10);
                if (test_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0) ||
                    sd_bus_message_read(reply, "o", &c) < 0 || !(c = strdup(c)))
                        _exit(11);
                const char *e = test_call(b, c, CONTAINER_IFACE, "AttachGroup", NULL, "u", group);
                if (e)
                        fprintf(stderr, "uid %u: AttachGroup(%u): %s\n", (unsigned) uid, group, e);
                _exit(e ? 12 : 0);
        }
        return pid;
}

/* One user pipelining calls that wait for polkit gets the excess refused at once (instead of a queue
 * that grows without bound and delays everybody's authorization); another user's call still reaches
 * polkit and succeeds. */
static void test_pending_checks_bounded_per_caller(void **state) {
        sd_bus *bus = test_bus_open();
        int sv[2], status;
        pid_t flooder, other;

        polkit_mock(bus, "SetAllowed", "as", 1, "org.vfiobroker.broker1.attach-group");
        polkit_mock(bus, "SimulateHang", "b", 1);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);

        flooder = fork();
        assert_true(flooder >= 0);
        if (flooder == 0) {
                sd_bus *b = NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *c;
                Flood f = {};
                const unsigned n = 40;
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                        _exit(10);
                if (test_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0) ||
                    sd_bus_message_read(reply, "o", &c) < 0 || !(c = strdup(c)))
                        _exit(11);
                for (unsigned i = 0; i < n; i++)
                        if (sd_bus_call_method_async(b, NULL, BUS_NAME, c, CONTAINER_IFACE, "AttachGroup",
                                                     on_flood_reply, &f, "u", 1) < 0)
                                _exit(12);
                /* The excess comes back at once; the rest waits for polkit, which hangs. */
                for (int i = 0; i < 500 && f.replies < n - 16; i++) {
                        if (sd_bus_process(b, NULL) > 0)
                                continue;
                        (void) sd_bus_wait(b, 20000);
                }
                char verdict = f.flood_denied == n - 16 && f.other_errors == 0 ? 'y' : 'n';
                fprintf(stderr, "flood: %u replies, %u refused as a flood, %u other\n", f.replies, f.flood_denied,
                        f.other_errors);
                (void) !write(sv[1], &verdict, 1);
                /* Hold the pending calls until the parent is done. */
                (void) !read(sv[1], &verdict, 1);
                _exit(0);
        }

        char verdict = 0;
        assert_int_equal(read(sv[0], &verdict, 1), 1);
        assert_int_equal(verdict, 'y');

        /* Another user is not refused for the flood: its call goes to polkit and succeeds once it answers. */
        other = attach_as(1, 2);
        for (int i = 0; i < 100 && waitpid(other, &status, WNOHANG) == 0; i++)
                usleep(20000);
        assert_int_equal(waitpid(other, &status, WNOHANG), 0);
        test_call_ok(bus, ROOT_PATH, "org.freedesktop.DBus.Peer", "Ping", NULL, "");
        /* Whether its question is hanging in polkit by now or still on its way, it is answered. */
        polkit_mock(bus, "SimulateHang", "b", 0);
        polkit_mock(bus, "ReleaseHangingCalls", "");
        assert_int_equal(waitpid(other, &status, 0), other);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);

        (void) !write(sv[0], "x", 1);
        assert_int_equal(waitpid(flooder, &status, 0), flooder);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        close(sv[0]);
        close(sv[1]);
        sd_bus_flush_close_unref(bus);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_slow_polkit_does_not_stall),
                cmocka_unit_test(test_pending_checks_bounded_per_caller),
        };
        return cmocka_run_group_tests_name("slow polkit", tests, NULL, NULL);
}
