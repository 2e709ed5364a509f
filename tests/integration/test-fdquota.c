/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What a hostile unprivileged caller can take of the daemon's own resources (issue 15), with the
 * config in meson.build ("fds": 8 for everyone; "address_space" left at its default):
 *  - every distinct memory fd costs the daemon one fd: a flood of memfds stops at the user's "fds"
 *    limit with QuotaExceeded, and root still maps;
 *  - a mapping reserves the whole memory file in the daemon's address space: Maps of 4 KiB out of
 *    sparse 3 TiB memfds stop at the "address_space" limit instead of taking the daemon's 128 TiB,
 *    and root still maps. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define TiB (UINT64_C(1) << 40)
#define QUOTA "org.vfiobroker.Broker1.Error.QuotaExceeded"

/* Child exit codes: 0 all as expected; others say what went wrong (the parent prints them). */
enum { CHILD_SETUP = 100, CHILD_EARLY_REFUSAL, CHILD_NOT_REFUSED, CHILD_WRONG_ERROR, CHILD_CLOSE };

static uint64_t daemon_vm_size(void) {
        const char *pid = getenv("VFIO_BROKER_DAEMON_PID");
        char path[64], line[256];
        uint64_t kb = 0;
        FILE *f;

        assert_non_null(pid);
        snprintf(path, sizeof(path), "/proc/%s/status", pid);
        f = fopen(path, "re");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "VmSize: %" SCNu64 " kB", &kb) == 1)
                        break;
        fclose(f);
        assert_true(kb > 0);
        return kb * KiB;
}

static int sparse_memfd(uint64_t size) {
        int fd = memfd_create("sparse", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t) size) < 0)
                return -1;
        return fd;
}

/* As nobody (polkit-test.rules lets it attach group 1): one container, then Maps of 4 KiB from n
 * new memfds of file_size bytes each; the first `allowed` succeed, the next is QuotaExceeded naming
 * `limit`. The child writes the refusal's message to msg_fd. */
static int flood_as_nobody(unsigned allowed, uint64_t file_size, const char *limit, int msg_fd) {
        sd_bus *b = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        char *path;

        if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                return CHILD_SETUP;
        path = test_create_container(b, "flood");
        if (!path || test_call(b, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1))
                return CHILD_SETUP;
        for (unsigned i = 0; i <= allowed; i++) {
                _cleanup_close_ int fd = sparse_memfd(file_size);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                if (fd < 0)
                        return CHILD_SETUP;
                if (sd_bus_message_new_method_call(b, &m, BUS_NAME, path, CONTAINER_IFACE, "Map") < 0 ||
                    sd_bus_message_append(m, "htttu", fd, UINT64_C(0), 4 * KiB, (uint64_t) i * 4 * KiB,
                                          UINT32_C(3)) < 0)
                        return CHILD_SETUP;
                int r = sd_bus_call(b, m, 0, &error, NULL);
                if (i < allowed && r < 0) {
                        (void) !write(msg_fd, error.message, strlen(error.message));
                        return CHILD_EARLY_REFUSAL;
                }
                if (i == allowed) {
                        if (r >= 0)
                                return CHILD_NOT_REFUSED;
                        (void) !write(msg_fd, error.message, strlen(error.message));
                        if (strcmp(error.name, QUOTA) != 0 || !strstr(error.message, limit))
                                return CHILD_WRONG_ERROR;
                }
        }
        if (test_call(b, path, CONTAINER_IFACE, "Close", NULL, ""))
                return CHILD_CLOSE;
        return 0;
}

static int run_flood(unsigned allowed, uint64_t file_size, const char *limit, char *msg, size_t msg_size) {
        int p[2], status;
        pid_t pid;
        ssize_t n;

        assert_true(pipe2(p, O_CLOEXEC) == 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(flood_as_nobody(allowed, file_size, limit, p[1]));
        close(p[1]);
        n = read(p[0], msg, msg_size - 1);
        msg[n > 0 ? n : 0] = 0;
        close(p[0]);
        assert_true(waitpid(pid, &status, 0) == pid);
        assert_true(WIFEXITED(status));
        return WEXITSTATUS(status);
}

/* Root, unlimited, maps a memfd of its own while nobody's refused flood is still fresh. */
static void root_still_maps(unsigned group) {
        sd_bus *bus = test_bus_open();
        char *path = test_create_container(bus, "root");
        _cleanup_close_ int ram = test_memfd(2 * MiB);

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", group);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 2 * MiB, UINT64_C(0),
                     UINT32_C(3));
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        free(path);
        sd_bus_flush_close_unref(bus);
}

static void test_memfd_flood(void **state) {
        char msg[1024];
        int r;

        /* Eight distinct memfds are fine; the ninth would be the ninth fd the daemon keeps for nobody. */
        r = run_flood(8, 4 * KiB, "\"fds\"", msg, sizeof(msg));
        if (r != 0)
                fail_msg("the flood as nobody ended with %d: %s", r, msg);
        assert_non_null(strstr(msg, "is 8"));
        root_still_maps(2);
}

static void test_sparse_address_space(void **state) {
        uint64_t before = daemon_vm_size(), after;
        char msg[1024];
        int r;

        /* The default "address_space" is 8 TiB: two sparse 3 TiB files fit, the third does not. */
        r = run_flood(2, 3 * TiB, "\"address_space\"", msg, sizeof(msg));
        if (r != 0)
                fail_msg("the sparse Maps as nobody ended with %d: %s", r, msg);
        after = daemon_vm_size();
        /* Closed again: what the flood reserved is gone, and never was more than the limit. */
        assert_true(after < before + 8 * TiB);
        root_still_maps(2);
}

static void test_sparse_reserve_bounded_while_held(void **state) {
        /* While held, the reservation is what the limit allows, not 43 x 3 TiB. */
        uint64_t before = daemon_vm_size();
        sd_bus *b = NULL;
        int p[2], q[2], status;
        char x;
        pid_t pid;

        assert_true(pipe2(p, O_CLOEXEC) == 0);
        assert_true(pipe2(q, O_CLOEXEC) == 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                char *path;
                unsigned ok = 0;

                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 ||
                    sd_bus_open_system(&b) < 0)
                        _exit(CHILD_SETUP);
                path = test_create_container(b, "sparse");
                if (!path || test_call(b, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1))
                        _exit(CHILD_SETUP);
                for (unsigned i = 0; i < 43; i++) {
                        _cleanup_close_ int fd = sparse_memfd(3 * TiB);
                        const char *e = test_call(b, path, CONTAINER_IFACE, "Map", NULL, "htttu", fd, UINT64_C(0),
                                                  4 * KiB, (uint64_t) i * 4 * KiB, UINT32_C(3));
                        if (!e)
                                ok++;
                        else if (strcmp(e, QUOTA) != 0)
                                _exit(CHILD_WRONG_ERROR);
                }
                if (ok != 2)
                        _exit(CHILD_NOT_REFUSED);
                /* Tell the parent the mappings are held, and hold them until it has looked. */
                (void) !write(p[1], "x", 1);
                (void) !read(q[0], &x, 1);
                _exit(test_call(b, path, CONTAINER_IFACE, "Close", NULL, "") ? CHILD_CLOSE : 0);
        }
        close(p[1]);
        close(q[0]);
        assert_int_equal(read(p[0], &x, 1), 1);
        uint64_t held = daemon_vm_size();
        /* Another user is served while nobody holds all it may. */
        root_still_maps(2);
        (void) !write(q[1], "x", 1);
        close(q[1]);
        close(p[0]);
        assert_true(waitpid(pid, &status, 0) == pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        /* Two 3 TiB files at most (plus slack for the daemon's own allocations), not 129 TiB. */
        if (held > before + 6 * TiB + 64 * MiB)
                fail_msg("VmSize grew by %" PRIu64 " bytes", held - before);
}

static int open_connection(sd_bus *b, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd;

        if (sd_bus_call_method(b, BUS_NAME, ROOT_PATH, MANAGER_IFACE, "OpenConnection", error, &reply, "") < 0 ||
            sd_bus_message_read(reply, "h", &fd) < 0)
                return -1;
        return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* Peer connections are fds of the daemon too (4 each: the client's socket, the dup sd-bus writes to,
 * the socketpair the relay feeds sd-bus through): they share "fds" with the memory fds. nobody opens
 * one, then may map 4 distinct memfds, not 5. */
static int peers_as_nobody(int msg_fd) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *b = NULL;
        char *path;

        if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                return CHILD_SETUP;
        path = test_create_container(b, "peers");
        if (!path || test_call(b, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1))
                return CHILD_SETUP;
        for (unsigned i = 0; i < 1; i++)
                if (open_connection(b, &error) < 0) {
                        (void) !write(msg_fd, error.message, strlen(error.message));
                        return CHILD_EARLY_REFUSAL;
                }
        for (unsigned i = 0; i < 5; i++) {
                _cleanup_close_ int fd = sparse_memfd(4 * KiB);
                const char *e = test_call(b, path, CONTAINER_IFACE, "Map", NULL, "htttu", fd, UINT64_C(0), 4 * KiB,
                                          (uint64_t) i * 4 * KiB, UINT32_C(3));
                if (i < 4 && e)
                        return CHILD_EARLY_REFUSAL;
                if (i == 4 && !e)
                        return CHILD_NOT_REFUSED;
                if (i == 4 && strcmp(e, QUOTA) != 0)
                        return CHILD_WRONG_ERROR;
        }
        /* At the limit, a peer connection is refused the same way, naming it. */
        if (open_connection(b, &error) >= 0)
                return CHILD_NOT_REFUSED;
        (void) !write(msg_fd, error.message, strlen(error.message));
        if (strcmp(error.name, QUOTA) != 0 || !strstr(error.message, "\"fds\""))
                return CHILD_WRONG_ERROR;
        return 0;
}

static void test_peer_connections_share_fds(void **state) {
        char msg[1024];
        int p[2], status;
        ssize_t n;
        pid_t pid;

        assert_true(pipe2(p, O_CLOEXEC) == 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(peers_as_nobody(p[1]));
        close(p[1]);
        n = read(p[0], msg, sizeof(msg) - 1);
        msg[n > 0 ? n : 0] = 0;
        close(p[0]);
        assert_true(waitpid(pid, &status, 0) == pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) != 0)
                fail_msg("the peers as nobody ended with %d: %s", WEXITSTATUS(status), msg);
        assert_non_null(strstr(msg, "is 8"));
        /* nobody's connection closed with its exit: everything it held goes, and so does the charge,
         * which the flood test after this one would otherwise hit early. Root is served meanwhile. */
        root_still_maps(2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_peer_connections_share_fds),
                cmocka_unit_test(test_memfd_flood),
                cmocka_unit_test(test_sparse_address_space),
                cmocka_unit_test(test_sparse_reserve_bounded_while_held),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
