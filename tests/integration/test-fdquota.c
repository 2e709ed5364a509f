/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What a hostile unprivileged caller can take of the daemon's own resources (issue 15), with the
 * config in meson.build ("fds": 8 and "address_space": 64 GiB for everyone):
 *  - every distinct memory fd costs the daemon one fd: a flood of memfds stops at the user's "fds"
 *    limit with QuotaExceeded, and root still maps;
 *  - a mapping reserves a window of its memory file in the daemon's address space (the 1 GiB granules
 *    it touches), not the whole file: Maps of 4 KiB out of sparse 3 TiB memfds, which once took the
 *    daemon's 128 TiB in 43 calls, each grow the daemon by a window until the "address_space" limit
 *    of the windows, Maps inside windows held go on at the limit, and root still maps;
 *  - after a restart the daemon maps the windows of the mappings it restores, not the files. */

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
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)
#define ADDRESS_SPACE_LIMIT (64 * GiB) /* meson.build's config */
#define QUOTA "org.vfiobroker.Broker1.Error.QuotaExceeded"

/* Child exit codes: 0 all as expected; others say what went wrong (the parent prints them). */
enum { CHILD_SETUP = 100, CHILD_EARLY_REFUSAL, CHILD_NOT_REFUSED, CHILD_WRONG_ERROR, CHILD_CLOSE };

/* The daemon's pid: the harness's, or the one a restart started. */
static long daemon_pid;

static uint64_t daemon_vm_size(void) {
        char path[64], line[256];
        uint64_t kb = 0;
        FILE *f;

        if (daemon_pid == 0) {
                assert_non_null(getenv("VFIO_BROKER_DAEMON_PID"));
                daemon_pid = atol(getenv("VFIO_BROKER_DAEMON_PID"));
        }
        snprintf(path, sizeof(path), "/proc/%ld/status", daemon_pid);
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

/* A child holding sparse mappings as nobody, driven through two pipes. */
typedef struct SparseHolder {
        pid_t pid;
        FILE *from_child;
        int to_child;
} SparseHolder;

enum { N_SPARSE_FILES = 4, N_SHARED = 16 };

/* As nobody: Maps of 4 KiB from N_SPARSE_FILES sparse 3 TiB memfds, one per granule in turn (Map i
 * from file i % N at granule i / N), until max_maps or a refusal; then one more Map of 4 KiB inside
 * each of the first N_SHARED granules mapped, which must succeed: it shares a window held. Reports
 * "<maps> <error name or -> <message>", waits for the parent, checks that its container still holds
 * all of them (after a restart, too), closes it and reports "closed". */
static int sparse_as_nobody(unsigned max_maps, int out, int in) {
        int files[N_SPARSE_FILES]; /* the child exits with them */
        sd_bus_error error = SD_BUS_ERROR_NULL;
        unsigned ok = 0, shared = 0;
        sd_bus *b = NULL;
        char *path, x;

        if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                return CHILD_SETUP;
        path = test_create_container(b, "sparse");
        if (!path || test_call(b, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1))
                return CHILD_SETUP;
        for (unsigned i = 0; i < N_SPARSE_FILES; i++)
                if ((files[i] = sparse_memfd(3 * TiB)) < 0)
                        return CHILD_SETUP;

        for (; ok < max_maps; ok++)
                if (sd_bus_call_method(b, BUS_NAME, path, CONTAINER_IFACE, "Map", &error, NULL, "htttu",
                                       files[ok % N_SPARSE_FILES], (uint64_t) (ok / N_SPARSE_FILES) * GiB, 4 * KiB,
                                       (uint64_t) ok * 4 * KiB, UINT32_C(3)) < 0)
                        break;
        for (; shared < N_SHARED && shared < ok; shared++)
                if (test_call(b, path, CONTAINER_IFACE, "Map", NULL, "htttu", files[shared % N_SPARSE_FILES],
                              (uint64_t) (shared / N_SPARSE_FILES) * GiB + 64 * KiB, 4 * KiB,
                              (uint64_t) (max_maps + shared) * 4 * KiB, UINT32_C(3)))
                        return CHILD_WRONG_ERROR;
        dprintf(out, "%u %s %s\n", ok, error.name ?: "-", error.message ?: "-");

        if (read(in, &x, 1) != 1)
                return CHILD_SETUP;
        if (test_get_u32(b, path, CONTAINER_IFACE, "Mappings") != ok + shared)
                return CHILD_CLOSE;
        if (test_call(b, path, CONTAINER_IFACE, "Close", NULL, ""))
                return CHILD_CLOSE;
        dprintf(out, "closed\n");
        return 0;
}

/* Starts the child; returns how many of its Maps one per granule succeeded, and the refusal. */
static unsigned sparse_hold(SparseHolder *h, unsigned max_maps, char *error_name, char *msg, size_t msg_size) {
        int p[2], q[2];
        char line[2048];
        unsigned ok;
        int n;

        assert_true(pipe2(p, O_CLOEXEC) == 0);
        assert_true(pipe2(q, O_CLOEXEC) == 0);
        h->pid = fork();
        assert_true(h->pid >= 0);
        if (h->pid == 0) {
                /* Only the parent writes: the child sees EOF if the parent goes without a word. */
                close(p[0]);
                close(q[1]);
                _exit(sparse_as_nobody(max_maps, p[1], q[0]));
        }
        close(p[1]);
        close(q[0]);
        h->from_child = fdopen(p[0], "re");
        h->to_child = q[1];
        assert_non_null(h->from_child);
        if (!fgets(line, sizeof(line), h->from_child)) {
                int status;
                assert_true(waitpid(h->pid, &status, 0) == h->pid);
                fail_msg("the sparse Maps as nobody ended with %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
        line[strcspn(line, "\n")] = 0;
        assert_true(sscanf(line, "%u %255s %n", &ok, error_name, &n) == 2);
        snprintf(msg, msg_size, "%s", line + n);
        return ok;
}

/* A failed check: the child goes, and its container with its connection. */
static void sparse_abandon(SparseHolder *h) {
        (void) kill(h->pid, SIGKILL);
        (void) waitpid(h->pid, NULL, 0);
        close(h->to_child);
        fclose(h->from_child);
}

/* Lets the child check and close its container, and waits for it. */
static void sparse_release(SparseHolder *h) {
        char line[64];
        int status;

        assert_int_equal(write(h->to_child, "x", 1), 1);
        close(h->to_child);
        if (!fgets(line, sizeof(line), h->from_child))
                line[0] = 0;
        fclose(h->from_child);
        assert_true(waitpid(h->pid, &status, 0) == h->pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_string_equal(line, "closed\n");
}

static void test_sparse_windows(void **state) {
        uint64_t before = daemon_vm_size(), held, after, limit_windows = ADDRESS_SPACE_LIMIT / GiB;
        char error_name[256], msg[2048];
        SparseHolder h;
        unsigned ok;

        /* One window of 1 GiB per Map of 4 KiB, however large the sparse file: as many Maps as the
         * limit holds windows, and the next is refused naming it. */
        ok = sparse_hold(&h, 1000, error_name, msg, sizeof(msg));
        if (ok != limit_windows || strcmp(error_name, QUOTA) != 0 || !strstr(msg, "\"address_space\"")) {
                sparse_abandon(&h);
                fail_msg("nobody's Maps of 4 KiB from sparse 3 TiB files: %u succeeded (expected %" PRIu64
                         "), then %s: %s", ok, limit_windows, error_name, msg);
        }
        held = daemon_vm_size();
        print_message("VmSize grew by %" PRIu64 " MiB for %u Maps of 4 KiB in distinct granules and %u in "
                      "granules mapped already\n", (held - before) / MiB, ok, N_SHARED);
        /* About one window per Map, not the files' 12 TiB (slack for the daemon's own allocations). */
        if (held + 64 * MiB < before + ok * GiB || held > before + ok * GiB + 64 * MiB) {
                sparse_abandon(&h);
                fail_msg("VmSize grew by %" PRIu64 " bytes, expected about %u GiB", held - before, ok);
        }
        /* Another user is served while nobody holds all it may. */
        root_still_maps(2);

        sparse_release(&h);
        after = daemon_vm_size();
        if (after > before + 64 * MiB)
                fail_msg("VmSize is %" PRIu64 " bytes above where it was once nobody closed", after - before);
}

/* Last, as it restarts the daemon. */
static void test_sparse_windows_after_restart(void **state) {
        uint64_t before = daemon_vm_size(), held, restored, after;
        char error_name[256], msg[2048];
        const char *started;
        SparseHolder h;
        unsigned ok;

        ok = sparse_hold(&h, 16, error_name, msg, sizeof(msg));
        held = daemon_vm_size();
        if (ok != 16 || held + 64 * MiB < before + 16 * GiB || held > before + 16 * GiB + 64 * MiB) {
                sparse_abandon(&h);
                fail_msg("nobody's Maps: %u succeeded, then %s: %s; VmSize grew by %" PRIu64 " MiB", ok,
                         error_name, msg, (held - before) / MiB);
        }

        assert_string_equal(test_harness("kill9"), "killed");
        started = test_harness("start");
        assert_true(sscanf(started, "started %ld", &daemon_pid) == 1);
        restored = daemon_vm_size();
        root_still_maps(2);

        /* What nobody's Close gives back is what the restored mappings reserved: their windows. */
        sparse_release(&h);
        after = daemon_vm_size();
        print_message("after a restart, nobody's %u mappings held %" PRIu64 " MiB of the daemon's address space "
                      "(%" PRIu64 " MiB before it)\n", ok + N_SHARED, (restored - after) / MiB, (held - before) / MiB);
        if (restored < after + 16 * GiB - 64 * MiB || restored > after + 16 * GiB + 64 * MiB)
                fail_msg("the restored mappings held %" PRIu64 " bytes of address space, expected about 16 GiB",
                         restored - after);
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
                cmocka_unit_test(test_sparse_windows),
                cmocka_unit_test(test_sparse_windows_after_restart),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
