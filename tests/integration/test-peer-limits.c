/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What unprivileged users can take of the daemon through peer connections and fds (issue 15), each
 * against the real daemon with another user served meanwhile. The config in meson.build: "fds": 8 for
 * everyone and "reserved_fds": 1000; polkit-test.rules lets nobody attach group 1.
 *  - a peer connection may not make the daemon buffer a message bigger than 8 MiB: three of nobody's,
 *    each sending the start of a 100 MB message, are closed and the daemon hardly grows, while root
 *    and uid 1 are served; the largest Update the daemon takes still passes;
 *  - a client whose bytes come one at a time, and pipelined calls with fds, work as usual;
 *  - the unfinished messages of one user's peer connections may declare 16 MiB together: nobody's
 *    third 7 MiB message closes its connection;
 *  - the fds of a message still arriving are the user's: nobody's second unfinished message with 253
 *    fds passes its "fds" by more than one message's leeway and closes that connection;
 *  - the fds kept for users other than root together stop at RLIMIT_NOFILE minus "reserved_fds":
 *    with the daemon's RLIMIT_NOFILE lowered to 1021, nobody (13: a container and 12 memory fds, its
 *    "fds") and uid 1 (8: two peer connections, its "fds") fill the 21, uid 2's next fd is
 *    QuotaExceeded naming "reserved_fds", root still opens devices and maps; when nobody lets go, uid 2
 *    is served. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define QUOTA "org.vfiobroker.Broker1.Error.QuotaExceeded"
#define PEER_IFACE "org.freedesktop.DBus.Peer"

/* What a hostile connection declares, and how much of it it sends: enough to show in the daemon's RSS
 * (192 MiB for three), never the whole, so that sd-bus would not drop it as complete garbage. */
#define HOSTILE_MESSAGE_SIZE (100 * 1000 * 1000)
#define HOSTILE_SENT_MAX (64 * MiB)

static uint64_t daemon_status(const char *field) {
        const char *pid = getenv("VFIO_BROKER_DAEMON_PID");
        char path[64], line[256];
        size_t n = strlen(field);
        uint64_t kb = 0;
        FILE *f;

        assert_non_null(pid);
        snprintf(path, sizeof(path), "/proc/%s/status", pid);
        f = fopen(path, "re");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, field, n) == 0 && line[n] == ':' &&
                    sscanf(line + n + 1, "%" SCNu64 " kB", &kb) == 1)
                        break;
        fclose(f);
        assert_true(kb > 0);
        return kb * KiB;
}

static int become(uid_t uid, sd_bus **ret) {
        if (setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0 || sd_bus_open_system(ret) < 0)
                return -1;
        return 0;
}

/* OpenConnection; NULL and the error in error when refused. */
static int open_connection_fd(sd_bus *bus, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd;

        if (sd_bus_call_method(bus, BUS_NAME, ROOT_PATH, MANAGER_IFACE, "OpenConnection", error, &reply, "") < 0 ||
            sd_bus_message_read(reply, "h", &fd) < 0)
                return -1;
        return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

static sd_bus *peer_from_fd(int fd) {
        sd_bus *p = NULL;

        if (fd < 0 || sd_bus_new(&p) < 0 || sd_bus_set_fd(p, fd, fd) < 0 || sd_bus_set_anonymous(p, true) < 0 ||
            sd_bus_negotiate_fds(p, true) < 0 || sd_bus_start(p) < 0)
                return NULL;
        return p;
}

/* A call on a peer connection: NULL, the error's name, or "(local)" when the connection failed. */
static const char *peer_call_message(sd_bus *p, sd_bus_message *m, sd_bus_message **reply) {
        static char name[256];
        sd_bus_error error = SD_BUS_ERROR_NULL;

        if (sd_bus_call(p, m, 60 * 1000000ULL, &error, reply) >= 0)
                return NULL;
        snprintf(name, sizeof(name), "%s", sd_bus_error_is_set(&error) && error.name[0] != 0 &&
                 !sd_bus_error_has_name(&error, SD_BUS_ERROR_NO_REPLY) ? error.name : "(local)");
        sd_bus_error_free(&error);
        return name;
}

static const char *peer_call(sd_bus *p, const char *path, const char *iface, const char *member,
                             sd_bus_message **reply, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        va_list ap;

        if (sd_bus_message_new_method_call(p, &m, NULL, path, iface, member) < 0)
                return "(local)";
        if (types && *types) {
                va_start(ap, types);
                int r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                if (r < 0)
                        return "(local)";
        }
        return peer_call_message(p, m, reply);
}

/* Root is not charged: it creates a container, opens a device and maps while users are at their limits. */
static void root_served(unsigned group, const char *device) {
        sd_bus *bus = test_bus_open();
        char *path = test_create_container(bus, "root");
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_close_ int ram = test_memfd(2 * MiB);
        int fd;

        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", group);
        test_call_ok(bus, path, CONTAINER_IFACE, "OpenDevice", &reply, "s", device);
        assert_true(sd_bus_message_read(reply, "h", &fd) >= 0);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 2 * MiB, UINT64_C(0),
                     UINT32_C(3));
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        free(path);
        sd_bus_flush_close_unref(bus);
}

/* Child processes report through a pipe and wait for the parent's word on another. */
typedef struct Child {
        pid_t pid;
        int report; /* read end */
        int go;     /* write end */
} Child;

typedef int (*ChildFunction)(int report, int go, void *userdata);

static Child child_start(ChildFunction f, void *userdata) {
        int r[2], g[2];
        Child c;

        assert_true(pipe2(r, O_CLOEXEC) == 0);
        assert_true(pipe2(g, O_CLOEXEC) == 0);
        c.pid = fork();
        assert_true(c.pid >= 0);
        if (c.pid == 0) {
                close(r[0]);
                close(g[1]);
                _exit(f(r[1], g[0], userdata));
        }
        close(r[1]);
        close(g[0]);
        c.report = r[0];
        c.go = g[1];
        return c;
}

static void child_read(Child *c, void *p, size_t n) {
        ssize_t k = read(c->report, p, n);
        if (k != (ssize_t) n)
                fail_msg("the child reported %zd bytes, not %zu", k, n);
}

static int child_finish(Child *c) {
        int status;

        (void) !write(c->go, "x", 1);
        close(c->go);
        close(c->report);
        assert_true(waitpid(c->pid, &status, 0) == c->pid);
        assert_true(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static void wait_go(int go) {
        char x;
        (void) !read(go, &x, 1);
}

/* --- A message too big for a peer connection --- */

typedef struct HostileReport {
        int setup;               /* 0, or where it failed */
        uint64_t accepted[3];    /* bytes the daemon's end took before it closed */
        int closed[3];           /* the daemon closed the connection */
} HostileReport;

/* Sends the fixed header of a method call declaring HOSTILE_MESSAGE_SIZE bytes, then up to
 * HOSTILE_SENT_MAX of it; returns the bytes taken and whether the daemon closed the connection. */
static uint64_t send_start_of_huge_message(int fd, int *ret_closed) {
        static uint8_t zeros[1 << 20];
        uint8_t header[16] = { 'l', 1 /* METHOD_CALL */, 0, 1 /* version */ };
        uint32_t body = HOSTILE_MESSAGE_SIZE - 16, serial = 1000, fields = 0;
        uint64_t sent = 0;
        time_t deadline = time(NULL) + 30;
        int closed = 0;

        memcpy(header + 4, &body, 4); /* little endian: the test runs on x86-64 and arm64 */
        memcpy(header + 8, &serial, 4);
        memcpy(header + 12, &fields, 4);
        if (send(fd, header, sizeof(header), MSG_NOSIGNAL) != sizeof(header)) {
                *ret_closed = 1;
                return 0;
        }
        while (sent < HOSTILE_SENT_MAX && time(NULL) < deadline) {
                struct pollfd p = { .fd = fd, .events = POLLOUT };
                ssize_t k;

                if (poll(&p, 1, 1000) < 0)
                        break;
                k = send(fd, zeros, sizeof(zeros), MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                if (k < 0) {
                        closed = errno == EPIPE || errno == ECONNRESET;
                        break;
                }
                sent += (uint64_t) k;
        }
        if (!closed) {
                /* All sent (the daemon took it) or stuck: closed only if the daemon hung up. */
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char c;

                if (poll(&p, 1, 2000) > 0 && (p.revents & (POLLHUP | POLLERR | POLLIN)))
                        closed = recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
        }
        *ret_closed = closed;
        return sent;
}

static int hostile_as_nobody(int report, int go, void *userdata) {
        HostileReport rep = {};
        sd_bus *b = NULL, *peers[3] = {};
        sd_bus_error error = SD_BUS_ERROR_NULL;

        if (become(65534, &b) < 0)
                rep.setup = 1;
        for (unsigned i = 0; i < 3 && !rep.setup; i++) {
                peers[i] = peer_from_fd(open_connection_fd(b, &error));
                /* A round trip: authentication is over, what follows is a message. */
                if (!peers[i] || peer_call(peers[i], ROOT_PATH, PEER_IFACE, "Ping", NULL, ""))
                        rep.setup = 2 + (int) i;
        }
        for (unsigned i = 0; i < 3 && !rep.setup; i++)
                rep.accepted[i] = send_start_of_huge_message(sd_bus_get_fd(peers[i]), &rep.closed[i]);
        (void) !write(report, &rep, sizeof(rep));
        /* Hold the connections (and what the daemon may have buffered for them) until the parent looked. */
        wait_go(go);
        return 0;
}

/* uid 1 ("daemon", an account of every Debian system: dbus-daemon refuses a uid without one): its
 * own peer connection works meanwhile. */
static int other_user_served(int report, int go, void *userdata) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus *b = NULL, *peer;
        const char *path;
        int result = 0;

        if (become(1, &b) < 0)
                result = 1;
        else if (!(peer = peer_from_fd(open_connection_fd(b, &error)))) {
                fprintf(stderr, "uid 1: OpenConnection: %s\n", error.message ?: "(no error)");
                result = 2;
        }
        else if (peer_call(peer, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0) ||
                 sd_bus_message_read(reply, "o", &path) < 0)
                result = 3;
        else if (peer_call(peer, path, CONTAINER_IFACE, "Close", NULL, ""))
                result = 4;
        (void) !write(report, &result, sizeof(result));
        wait_go(go);
        return 0;
}

static void test_huge_messages_closed(void **state) {
        uint64_t before = daemon_status("VmRSS"), held;
        HostileReport rep;
        Child hostile, other;
        int result;

        hostile = child_start(hostile_as_nobody, NULL);
        child_read(&hostile, &rep, sizeof(rep));
        held = daemon_status("VmRSS");
        if (rep.setup)
                fail_msg("nobody's peer connections could not be set up (%d)", rep.setup);

        /* While nobody holds its three connections: root and another user are served. */
        root_served(2, "0000:00:02.0");
        other = child_start(other_user_served, NULL);
        child_read(&other, &result, sizeof(result));
        assert_int_equal(child_finish(&other), 0);
        if (result != 0)
                fail_msg("uid 1 was not served on its peer connection (%d)", result);

        printf("# daemon RSS %" PRIu64 " KiB before, %" PRIu64 " KiB with three 100 MB messages started "
               "(%+" PRId64 " KiB); the daemon took %" PRIu64 ", %" PRIu64 ", %" PRIu64 " bytes of them\n",
               before / KiB, held / KiB, ((int64_t) held - (int64_t) before) / (int64_t) KiB, rep.accepted[0],
               rep.accepted[1], rep.accepted[2]);
        assert_int_equal(child_finish(&hostile), 0);

        for (unsigned i = 0; i < 3; i++)
                if (!rep.closed[i])
                        fail_msg("connection %u is still open after %" PRIu64 " bytes of a 100 MB message", i,
                                 rep.accepted[i]);
        /* Three relays and their sd-bus connections, not 3 x 64 MiB. */
        if (held > before + 8 * MiB)
                fail_msg("the daemon grew by %" PRIu64 " KiB", (held - before) / KiB);
}

/* The largest Update the daemon takes: 65536 unmaps, 253 memory fds, 65536 maps (3.5 MiB). None of the
 * unmaps matches a mapping, so the answer is NotMapped, with nothing changed: what counts is that an
 * answer comes, on a connection that still works. */
static void test_largest_update_passes(void **state) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL, *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *bus = test_bus_open(), *peer;
        int memfds[BROKER_UPDATE_FDS_MAX];
        const char *path, *e;
        char *saved;

        peer = peer_from_fd(open_connection_fd(bus, &error));
        assert_non_null(peer);
        assert_null(peer_call(peer, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0));
        assert_true(sd_bus_message_read(reply, "o", &path) >= 0);
        saved = strdup(path);
        assert_null(peer_call(peer, saved, CONTAINER_IFACE, "AttachGroup", NULL, "u", UINT32_C(3)));

        assert_true(sd_bus_message_new_method_call(peer, &m, NULL, saved, CONTAINER_IFACE, "Update") >= 0);
        assert_true(sd_bus_message_open_container(m, 'a', "(tt)") >= 0);
        for (uint64_t i = 0; i < BROKER_UPDATE_MAX; i++)
                assert_true(sd_bus_message_append(m, "(tt)", UINT64_C(0x100000000) + i * 4 * KiB, 4 * KiB) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_open_container(m, 'a', "h") >= 0);
        for (unsigned i = 0; i < BROKER_UPDATE_FDS_MAX; i++) {
                memfds[i] = test_memfd(4 * KiB);
                assert_true(sd_bus_message_append(m, "h", memfds[i]) >= 0);
        }
        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_open_container(m, 'a', "(utttu)") >= 0);
        for (uint64_t i = 0; i < BROKER_UPDATE_MAX; i++)
                assert_true(sd_bus_message_append(m, "(utttu)", (uint32_t) (i % BROKER_UPDATE_FDS_MAX), UINT64_C(0),
                                                  4 * KiB, i * 4 * KiB, UINT32_C(3)) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);

        e = peer_call_message(peer, m, NULL);
        assert_non_null(e);
        assert_string_equal(e, "org.vfiobroker.Broker1.Error.NotMapped");
        /* Still open, and nothing changed. */
        assert_null(peer_call(peer, ROOT_PATH, PEER_IFACE, "Ping", NULL, ""));
        assert_int_equal(test_get_u32(bus, saved, CONTAINER_IFACE, "Mappings"), 0);
        assert_null(peer_call(peer, saved, CONTAINER_IFACE, "Close", NULL, ""));

        for (unsigned i = 0; i < BROKER_UPDATE_FDS_MAX; i++)
                close(memfds[i]);
        free(saved);
        sd_bus_flush_close_unref(peer);
        sd_bus_flush_close_unref(bus);
}

/* Pipelined calls: each message's fds reach the daemon with that message, not with the one before
 * (the relay reads no further than a message's end). Map of a 4 KiB memfd, a Ping, Map of an 8 KiB
 * memfd, all sent before any answer: swapped fds would make the second Map OutOfRange. */
static void test_pipelined_fds(void **state) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *bus = test_bus_open(), *peer;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_close_ int small = test_memfd(4 * KiB), big = test_memfd(8 * KiB);
        sd_bus_message *replies[3] = {};
        const char *p;
        char *path;

        peer = peer_from_fd(open_connection_fd(bus, &error));
        assert_non_null(peer);
        assert_null(peer_call(peer, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0));
        assert_true(sd_bus_message_read(reply, "o", &p) >= 0);
        path = strdup(p);
        assert_null(peer_call(peer, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", UINT32_C(3)));

        for (unsigned round = 0; round < 20; round++) {
                uint64_t base = (uint64_t) round * MiB;

                for (unsigned i = 0; i < 3; i++) {
                        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                        if (i == 1)
                                assert_true(sd_bus_message_new_method_call(peer, &m, NULL, ROOT_PATH, PEER_IFACE,
                                                                           "Ping") >= 0);
                        else {
                                assert_true(sd_bus_message_new_method_call(peer, &m, NULL, path, CONTAINER_IFACE,
                                                                           "Map") >= 0);
                                assert_true(sd_bus_message_append(m, "htttu", i == 0 ? small : big, UINT64_C(0),
                                                                  i == 0 ? 4 * KiB : 8 * KiB,
                                                                  base + (i == 0 ? 0 : 64 * KiB), UINT32_C(3)) >= 0);
                        }
                        uint64_t cookie; /* asked for: without it the call says no reply is expected */
                        assert_true(sd_bus_send(peer, m, &cookie) >= 0);
                }
                assert_true(sd_bus_flush(peer) >= 0);
                /* The answers come in order: read them as they come. */
                for (unsigned i = 0; i < 3; i++) {
                        for (;;) {
                                sd_bus_message *m = NULL;
                                int r = sd_bus_process(peer, &m);
                                assert_true(r >= 0);
                                if (m) {
                                        replies[i] = m;
                                        break;
                                }
                                if (r == 0)
                                        assert_true(sd_bus_wait(peer, 10 * 1000000ULL) >= 0);
                        }
                        if (sd_bus_message_is_method_error(replies[i], NULL))
                                fail_msg("round %u, call %u: %s: %s", round, i,
                                         sd_bus_message_get_error(replies[i])->name,
                                         sd_bus_message_get_error(replies[i])->message);
                        replies[i] = sd_bus_message_unref(replies[i]);
                }
        }
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 40);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 20 * 12 * KiB);
        assert_null(peer_call(peer, path, CONTAINER_IFACE, "Close", NULL, ""));
        free(path);
        sd_bus_flush_close_unref(peer);
        sd_bus_flush_close_unref(bus);
}

/* Below the size limit, but together: nobody starts three 7 MiB messages on three connections and sends
 * 1 MiB of each; the third would make 21 MiB of unfinished messages, more than a user's 16, and closes
 * its connection, the first two stay open. */
static bool closed_by_daemon(int fd, int timeout_ms);

static int declared_size(int fd, uint32_t size, uint64_t send_bytes, int *ret_closed) {
        static uint8_t zeros[1 << 16];
        uint8_t header[16] = { 'l', 1, 0, 1 };
        uint32_t body = size - 16, serial = 1002, fields = 0;
        uint64_t sent = 0;

        memcpy(header + 4, &body, 4);
        memcpy(header + 8, &serial, 4);
        memcpy(header + 12, &fields, 4);
        if (send(fd, header, sizeof(header), MSG_NOSIGNAL) != sizeof(header))
                return -1;
        while (sent < send_bytes) {
                struct pollfd p = { .fd = fd, .events = POLLOUT };
                ssize_t k;

                if (poll(&p, 1, 2000) <= 0)
                        return -1;
                k = send(fd, zeros, sizeof(zeros), MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0 && (errno == EPIPE || errno == ECONNRESET))
                        break;
                if (k < 0 && errno != EAGAIN && errno != EINTR)
                        return -1;
                if (k > 0)
                        sent += (uint64_t) k;
        }
        *ret_closed = closed_by_daemon(fd, 2000);
        return 0;
}

static int bytes_as_nobody(int report, int go, void *userdata) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *b = NULL, *peers[3] = {};
        int closed[3] = {}, result = 0;

        if (become(65534, &b) < 0)
                result = 1;
        for (unsigned i = 0; i < 3 && !result; i++) {
                peers[i] = peer_from_fd(open_connection_fd(b, &error));
                if (!peers[i] || peer_call(peers[i], ROOT_PATH, PEER_IFACE, "Ping", NULL, ""))
                        result = 2;
        }
        for (unsigned i = 0; i < 3 && !result; i++)
                if (declared_size(sd_bus_get_fd(peers[i]), 7 * MiB, MiB, &closed[i]) < 0)
                        result = 3;
        if (!result && (closed[0] || closed[1]))
                result = 4;
        if (!result && !closed[2])
                result = 5;
        (void) !write(report, &result, sizeof(result));
        wait_go(go);
        return 0;
}

static void test_user_bytes_bounded(void **state) {
        uint64_t before = daemon_status("VmRSS"), held;
        Child nobody;
        int result;

        nobody = child_start(bytes_as_nobody, NULL);
        child_read(&nobody, &result, sizeof(result));
        held = daemon_status("VmRSS");
        root_served(2, "0000:00:02.0");
        assert_int_equal(child_finish(&nobody), 0);
        printf("# daemon RSS %+" PRId64 " KiB with two 7 MiB messages started and 1 MiB of each sent\n",
               ((int64_t) held - (int64_t) before) / (int64_t) KiB);
        if (result != 0)
                fail_msg("nobody's unfinished messages: step %d went wrong", result);
}

/* A client whose bytes arrive one at a time (a header split anywhere, fds with the first byte of their
 * message): a forwarding child passes what root's sd-bus writes to the daemon byte by byte, and the
 * daemon's answers back. Authentication, a Ping, a Map with a memfd and an Update work as usual. */
static int forward_bytewise(int client, int daemon_fd) {
        for (;;) {
                struct pollfd p[2] = { { .fd = client, .events = POLLIN }, { .fd = daemon_fd, .events = POLLIN } };

                if (poll(p, 2, 10000) <= 0)
                        return 1;
                if (p[0].revents) {
                        union {
                                struct cmsghdr header;
                                uint8_t buffer[CMSG_SPACE(sizeof(int) * BROKER_UPDATE_FDS_MAX)];
                        } control;
                        uint8_t c;
                        struct iovec iov = { &c, 1 };
                        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                                             .msg_controllen = sizeof(control) };
                        ssize_t k = recvmsg(client, &mh, MSG_CMSG_CLOEXEC);

                        if (k <= 0)
                                return 0; /* the client is done */
                        if (mh.msg_controllen == 0)
                                mh.msg_control = NULL;
                        if (sendmsg(daemon_fd, &mh, MSG_NOSIGNAL) != 1)
                                return 2;
                }
                if (p[1].revents) {
                        uint8_t buf[65536];
                        ssize_t k = recv(daemon_fd, buf, sizeof(buf), 0);

                        if (k <= 0)
                                return 3; /* the daemon closed: it must not */
                        if (send(client, buf, (size_t) k, MSG_NOSIGNAL) != k)
                                return 4;
                }
        }
}

static void test_bytewise_client(void **state) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *bus = test_bus_open(), *peer;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL, *m = NULL;
        _cleanup_close_ int ram = test_memfd(64 * KiB);
        int pair[2], status, daemon_fd;
        const char *p;
        char *path;
        pid_t pid;

        daemon_fd = open_connection_fd(bus, &error);
        assert_true(daemon_fd >= 0);
        assert_true(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(pair[0]);
                _exit(forward_bytewise(pair[1], daemon_fd));
        }
        close(pair[1]);
        close(daemon_fd);

        peer = peer_from_fd(pair[0]);
        assert_non_null(peer);
        assert_null(peer_call(peer, ROOT_PATH, PEER_IFACE, "Ping", NULL, ""));
        assert_null(peer_call(peer, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0));
        assert_true(sd_bus_message_read(reply, "o", &p) >= 0);
        path = strdup(p);
        assert_null(peer_call(peer, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", UINT32_C(3)));
        assert_null(peer_call(peer, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * KiB,
                              UINT64_C(0), UINT32_C(3)));
        assert_true(sd_bus_message_new_method_call(peer, &m, NULL, path, CONTAINER_IFACE, "Update") >= 0);
        assert_true(sd_bus_message_append(m, "a(tt)", 1, UINT64_C(0), 4 * KiB) >= 0);
        assert_true(sd_bus_message_append(m, "ah", 1, ram) >= 0);
        assert_true(sd_bus_message_append(m, "a(utttu)", 2, UINT32_C(0), UINT64_C(0), 4 * KiB, UINT64_C(0),
                                          UINT32_C(3), UINT32_C(0), 8 * KiB, 8 * KiB, 64 * KiB, UINT32_C(3)) >= 0);
        assert_null(peer_call_message(peer, m, NULL));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 2);
        assert_null(peer_call(peer, path, CONTAINER_IFACE, "Close", NULL, ""));

        sd_bus_flush_close_unref(peer);
        assert_true(waitpid(pid, &status, 0) == pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        free(path);
        sd_bus_flush_close_unref(bus);
}

/* --- Fds of unfinished messages --- */

/* The header of a 1 MiB method call (below the size limit) with n fds, and no more of it. */
static int send_header_with_fds(int fd, const int *fds, unsigned n) {
        union {
                struct cmsghdr header;
                uint8_t buffer[CMSG_SPACE(sizeof(int) * BROKER_UPDATE_FDS_MAX)];
        } control = {};
        uint8_t header[16] = { 'l', 1, 0, 1 };
        uint32_t body = 1 << 20, serial = 1001, fields = 0;
        struct iovec iov = { header, sizeof(header) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = CMSG_SPACE(sizeof(int) * n) };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

        memcpy(header + 4, &body, 4);
        memcpy(header + 8, &serial, 4);
        memcpy(header + 12, &fields, 4);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
        return sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t) sizeof(header) ? 0 : -errno;
}

static bool closed_by_daemon(int fd, int timeout_ms) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char c;

        return poll(&p, 1, timeout_ms) > 0 && recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

/* nobody ("fds" 12) starts two messages with 253 fds each on two peer connections: the first is held
 * (one message's leeway), the second would hold 506 and closes its connection. */
static int fds_in_flight_as_nobody(int report, int go, void *userdata) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *b = NULL, *peers[2] = {};
        int fds[BROKER_UPDATE_FDS_MAX], result = 0;

        if (become(65534, &b) < 0)
                result = 1;
        for (unsigned i = 0; i < 2 && !result; i++) {
                peers[i] = peer_from_fd(open_connection_fd(b, &error));
                if (!peers[i] || peer_call(peers[i], ROOT_PATH, PEER_IFACE, "Ping", NULL, ""))
                        result = 2;
        }
        for (unsigned i = 0; i < BROKER_UPDATE_FDS_MAX && !result; i++)
                if ((fds[i] = memfd_create("fd", MFD_CLOEXEC)) < 0)
                        result = 3;
        if (!result && send_header_with_fds(sd_bus_get_fd(peers[0]), fds, BROKER_UPDATE_FDS_MAX) < 0)
                result = 4;
        if (!result && closed_by_daemon(sd_bus_get_fd(peers[0]), 500))
                result = 5; /* the first, within the leeway, must be held */
        if (!result && send_header_with_fds(sd_bus_get_fd(peers[1]), fds, BROKER_UPDATE_FDS_MAX) < 0)
                result = 6;
        if (!result && !closed_by_daemon(sd_bus_get_fd(peers[1]), 5000))
                result = 7;
        if (!result && closed_by_daemon(sd_bus_get_fd(peers[0]), 0))
                result = 8;
        (void) !write(report, &result, sizeof(result));
        wait_go(go);
        return 0;
}

static void test_fds_in_flight_charged(void **state) {
        Child nobody;
        int result;

        nobody = child_start(fds_in_flight_as_nobody, NULL);
        child_read(&nobody, &result, sizeof(result));
        /* While nobody's first message holds 253 fds: root is served. */
        root_served(2, "0000:00:02.0");
        assert_int_equal(child_finish(&nobody), 0);
        if (result != 0)
                fail_msg("fds in flight as nobody: step %d went wrong", result);
}

/* --- All users together --- */

#define RESERVED_FDS 1000 /* as in meson.build */
#define TOTAL_FDS 21

static int sparse_memfd(uint64_t size) {
        int fd = memfd_create("ram", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t) size) < 0)
                return -1;
        return fd;
}

/* nobody: a container with group 1 and 12 distinct memory fds mapped, all its "fds" allow. */
static int fill_as_nobody(int report, int go, void *userdata) {
        sd_bus *b = NULL;
        char *path = NULL;
        int result = 0;

        if (become(65534, &b) < 0 || !(path = test_create_container(b, "fill")) ||
            test_call(b, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1))
                result = 1;
        for (unsigned i = 0; i < 12 && result == 0; i++) {
                _cleanup_close_ int fd = sparse_memfd(4 * KiB);
                if (test_call(b, path, CONTAINER_IFACE, "Map", NULL, "htttu", fd, UINT64_C(0), 4 * KiB,
                              (uint64_t) i * 4 * KiB, UINT32_C(3)))
                        result = 2;
        }
        (void) !write(report, &result, sizeof(result));
        wait_go(go);
        if (result == 0 && test_call(b, path, CONTAINER_IFACE, "Close", NULL, ""))
                return 3;
        return 0;
}

/* uid 1: two peer connections, 4 fds each: all its "fds". */
static int fill_as_uid1(int report, int go, void *userdata) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *b = NULL;
        int result = 0, fds[2] = { -1, -1 };

        if (become(1, &b) < 0)
                result = 1;
        for (unsigned i = 0; i < 2 && result == 0; i++)
                if ((fds[i] = open_connection_fd(b, &error)) < 0)
                        result = 2;
        (void) !write(report, &result, sizeof(result));
        wait_go(go);
        return 0;
}

/* uid 2, with nothing yet: a peer connection and a container are refused while the others hold all, and
 * the refusals name the limit; `expect_refused` false: the peer connection is granted. */
static int try_as_uid2(int report, int go, void *userdata) {
        bool expect_refused = *(bool *) userdata;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        char msg[512] = "";
        sd_bus *b = NULL;
        int result = 0, fd;

        if (become(2, &b) < 0)
                result = 1;
        else if ((fd = open_connection_fd(b, &error)) >= 0) {
                if (expect_refused)
                        result = 2;
        } else if (!expect_refused)
                result = 3;
        else if (!sd_bus_error_has_name(&error, QUOTA) || !strstr(error.message, "\"reserved_fds\""))
                result = 4;
        else {
                snprintf(msg, sizeof(msg), "%s", error.message);
                sd_bus_error_free(&error);
                if (expect_refused) {
                        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                        if (sd_bus_call_method(b, BUS_NAME, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &error,
                                               &reply, "a{sv}", 0) >= 0)
                                result = 5;
                        else if (!sd_bus_error_has_name(&error, QUOTA) || !strstr(error.message, "\"reserved_fds\""))
                                result = 6;
                }
        }
        if (result != 0 && sd_bus_error_is_set(&error))
                snprintf(msg, sizeof(msg), "%s", error.message);
        (void) !write(report, &result, sizeof(result));
        (void) !write(report, msg, sizeof(msg));
        wait_go(go);
        return 0;
}

static unsigned count_fds(pid_t pid) {
        char path[64];
        unsigned n = 0;
        DIR *d;

        snprintf(path, sizeof(path), "/proc/%d/fd", (int) pid);
        d = opendir(path);
        assert_non_null(d);
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

static void test_all_users_together(void **state) {
        pid_t daemon = (pid_t) atoi(getenv("VFIO_BROKER_DAEMON_PID"));
        struct rlimit old, lowered;
        Child nobody, uid1, uid2;
        bool refused = true, granted = false;
        char msg[512];
        int result;

        /* The daemon's RLIMIT_NOFILE, lowered so that the cap is TOTAL_FDS: what a daemon with 4096
         * fds and a handful of users meets, without opening thousands of fds. */
        assert_true(prlimit(daemon, RLIMIT_NOFILE, NULL, &old) == 0);
        if (old.rlim_max < RESERVED_FDS + TOTAL_FDS || count_fds(daemon) > RESERVED_FDS / 2)
                skip();
        lowered = (struct rlimit) { RESERVED_FDS + TOTAL_FDS, old.rlim_max };
        assert_true(prlimit(daemon, RLIMIT_NOFILE, &lowered, NULL) == 0);

        nobody = child_start(fill_as_nobody, NULL);
        child_read(&nobody, &result, sizeof(result));
        if (result != 0)
                fail_msg("nobody could not fill its fds (%d)", result);
        uid1 = child_start(fill_as_uid1, NULL);
        child_read(&uid1, &result, sizeof(result));
        if (result != 0)
                fail_msg("uid 1 could not fill its fds (%d)", result);

        /* 21 of 21: uid 2, below its own "fds", is refused, the error naming the overall limit. */
        uid2 = child_start(try_as_uid2, &refused);
        child_read(&uid2, &result, sizeof(result));
        child_read(&uid2, msg, sizeof(msg));
        assert_int_equal(child_finish(&uid2), 0);
        printf("# uid 2 refused: %s\n", msg);
        if (result != 0)
                fail_msg("uid 2 was not refused as expected (%d): %s", result, msg);
        assert_non_null(strstr(msg, "21"));

        /* Root is not charged against it. */
        root_served(2, "0000:00:02.0");

        /* nobody lets go of its 13: uid 2 is served, so the refusals changed nothing. */
        assert_int_equal(child_finish(&nobody), 0);
        uid2 = child_start(try_as_uid2, &granted);
        child_read(&uid2, &result, sizeof(result));
        child_read(&uid2, msg, sizeof(msg));
        assert_int_equal(child_finish(&uid2), 0);
        if (result != 0)
                fail_msg("uid 2 was refused after nobody let go (%d): %s", result, msg);
        assert_int_equal(child_finish(&uid1), 0);

        assert_true(prlimit(daemon, RLIMIT_NOFILE, &old, NULL) == 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_huge_messages_closed),
                cmocka_unit_test(test_largest_update_passes),
                cmocka_unit_test(test_pipelined_fds),
                cmocka_unit_test(test_bytewise_client),
                cmocka_unit_test(test_user_bytes_bounded),
                cmocka_unit_test(test_fds_in_flight_charged),
                cmocka_unit_test(test_all_users_together),
        };
        if (getenv("TEST_FILTER"))
                cmocka_set_test_filter(getenv("TEST_FILTER"));
        return cmocka_run_group_tests(tests, NULL, NULL);
}
