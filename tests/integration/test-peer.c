/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Manager.OpenConnection: the peer-to-peer connection serves the same objects with the identity of
 * the bus connection that opened it, fixed at creation, whoever uses the fd later; closing it closes
 * no container; the owner leaving the bus closes both. */

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define MiB (UINT64_C(1) << 20)

static int open_connection_fd(sd_bus *bus) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd;

        if (test_call(bus, ROOT_PATH, MANAGER_IFACE, "OpenConnection", &reply, "") ||
            sd_bus_message_read(reply, "h", &fd) < 0)
                return -1;
        return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

static sd_bus *peer_from_fd(int fd) {
        sd_bus *p = NULL;
        if (sd_bus_new(&p) < 0 || sd_bus_set_fd(p, fd, fd) < 0 || sd_bus_set_anonymous(p, true) < 0 ||
            sd_bus_negotiate_fds(p, true) < 0 || sd_bus_start(p) < 0)
                return NULL;
        return p;
}

/* A method call on a peer connection (no destination: there is no bus in between). */
static const char *peer_call(sd_bus *p, const char *path, const char *iface, const char *member, sd_bus_message **reply,
                             const char *types, ...) {
        static char name[256];
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;

        assert_true(sd_bus_message_new_method_call(p, &m, NULL, path, iface, member) >= 0);
        if (types && *types) {
                va_start(ap, types);
                assert_true(sd_bus_message_appendv(m, types, ap) >= 0);
                va_end(ap);
        }
        if (sd_bus_call(p, m, 10 * 1000000ULL, &error, reply) >= 0)
                return NULL;
        snprintf(name, sizeof(name), "%s", error.name ?: "(local)");
        sd_bus_error_free(&error);
        return name;
}

static void test_peer_identity(void **state) {
        sd_bus *bus = test_bus_open(), *peer;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_close_ int ram = test_memfd(4 * MiB);
        const char *unique, *p;
        _cleanup_free_ char *path = NULL, *owner = NULL;
        int sv[2], status;
        pid_t pid;

        peer = peer_from_fd(open_connection_fd(bus));
        assert_non_null(peer);
        assert_null(peer_call(peer, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 1, "Label", "s", "p2p"));
        assert_true(sd_bus_message_read(reply, "o", &p) >= 0);
        path = strdup(p);

        /* Owned by the bus connection that opened the peer connection. */
        assert_true(sd_bus_get_unique_name(bus, &unique) >= 0);
        owner = test_get_string(bus, path, CONTAINER_IFACE, "Owner", 's');
        assert_string_equal(owner, unique);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "UID"), getuid());

        /* The whole interface works over it, fds included. */
        assert_null(peer_call(peer, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1));
        assert_null(peer_call(peer, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, UINT64_C(0), UINT32_C(3)));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 1);
        reply = sd_bus_message_unref(reply);
        assert_null(peer_call(peer, path, "org.freedesktop.DBus.Properties", "Get", &reply, "ss", CONTAINER_IFACE, "MappedBytes"));

        /* An unprivileged process opens its own: it acts as itself, even when root uses its fd. */
        assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL, *pp;
                int failures = 0, fd;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *r2 = NULL;
                const char *own, *e;
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                        _exit(100);
                fd = open_connection_fd(b);
                if (fd < 0 || !(pp = peer_from_fd(fcntl(fd, F_DUPFD_CLOEXEC, 3))))
                        _exit(101);
                e = peer_call(pp, path, CONTAINER_IFACE, "Close", NULL, "");
                failures += !e || strcmp(e, "org.freedesktop.DBus.Error.AccessDenied") != 0;
                if (peer_call(pp, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &r2, "a{sv}", 0) ||
                    sd_bus_message_read(r2, "o", &own) < 0)
                        _exit(102);
                failures += test_get_u32(b, own, CONTAINER_IFACE, "UID") != 65534;
                /* No polkit on this bus: an unprivileged identity cannot attach, p2p or not. */
                e = peer_call(pp, own, CONTAINER_IFACE, "AttachGroup", NULL, "u", 2);
                failures += !e || strcmp(e, "org.freedesktop.DBus.Error.AccessDenied") != 0;
                /* Hand a second, unused peer fd to root, and wait until root is done with it. */
                fd = open_connection_fd(b);
                if (fd < 0)
                        _exit(104);
                struct msghdr mh = {};
                char cbuf[CMSG_SPACE(sizeof(int))] = {}, x = 'x';
                struct iovec iov = { &x, 1 };
                mh.msg_iov = &iov;
                mh.msg_iovlen = 1;
                mh.msg_control = cbuf;
                mh.msg_controllen = sizeof(cbuf);
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cm), &fd, sizeof(int));
                if (sendmsg(sv[1], &mh, 0) < 0)
                        _exit(103);
                (void) !read(sv[1], &x, 1);
                _exit(failures);
        }

        /* Root, using nobody's peer fd, is nobody there. */
        char x, cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = { &x, 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
        assert_true(recvmsg(sv[0], &mh, 0) > 0);
        int theirs;
        memcpy(&theirs, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
        sd_bus *borrowed = peer_from_fd(theirs);
        assert_non_null(borrowed);
        const char *e = peer_call(borrowed, path, CONTAINER_IFACE, "Close", NULL, "");
        assert_non_null(e);
        assert_string_equal(e, "org.freedesktop.DBus.Error.AccessDenied");
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *r3 = NULL;
        assert_null(peer_call(borrowed, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &r3, "a{sv}", 0));
        assert_true(sd_bus_message_read(r3, "o", &p) >= 0);
        assert_int_equal(test_get_u32(bus, p, CONTAINER_IFACE, "UID"), 65534);
        sd_bus_flush_close_unref(borrowed);
        (void) !write(sv[0], "x", 1);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);

        /* Closing the peer connection closes no container. */
        sd_bus_flush_close_unref(peer);
        usleep(100000);
        assert_true(test_object_exists(bus, path));

        /* The owner leaving the bus does. */
        sd_bus *observer = test_bus_open();
        sd_bus_flush_close_unref(bus);
        for (int i = 0; i < 100 && test_object_exists(observer, path); i++)
                usleep(20000);
        assert_false(test_object_exists(observer, path));
        sd_bus_flush_close_unref(observer);
}

static void send_fd(int sock, int fd) {
        char cbuf[CMSG_SPACE(sizeof(int))] = {}, x = 'x';
        struct iovec iov = { &x, 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        if (sendmsg(sock, &mh, 0) < 0)
                _exit(103);
}

static int recv_fd(int sock) {
        char x, cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = { &x, 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
        int fd;

        if (recvmsg(sock, &mh, 0) <= 0 || !CMSG_FIRSTHDR(&mh))
                return -1;
        memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
        return fd;
}

/* A peer connection goes with the bus connection that opened it, even one that owns no container:
 * otherwise it outlives its opener, still answers, and can open more. */
static void test_orphan_peer_closes(void **state) {
        int sv[2], status, fd;
        pid_t pid;

        assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                        _exit(100);
                fd = open_connection_fd(b);
                if (fd < 0)
                        _exit(101);
                send_fd(sv[1], fd);
                _exit(0); /* leaves the bus, owning no container */
        }
        fd = recv_fd(sv[0]);
        assert_true(fd >= 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

        /* The daemon closes its end: we see EOF. */
        struct pollfd p = { .fd = fd, .events = POLLIN };
        assert_int_equal(poll(&p, 1, 10000), 1);
        char buf[64];
        assert_int_equal(read(fd, buf, sizeof(buf)), 0);
        close(fd);
        close(sv[0]);
        close(sv[1]);
}

/* One user cannot hold the daemon's fds with peer connections: beyond the per-user bound the call is
 * refused, and another user is still served. */
static void test_peer_connections_bounded_per_user(void **state) {
        sd_bus *bus = test_bus_open();
        int sv[2], status;
        pid_t pid;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *b = NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                int opened = 0;
                const char *e = NULL;
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 || sd_bus_open_system(&b) < 0)
                        _exit(100);
                for (int i = 0; i < 64; i++) {
                        reply = sd_bus_message_unref(reply);
                        e = test_call(b, ROOT_PATH, MANAGER_IFACE, "OpenConnection", &reply, "");
                        if (e)
                                break;
                        int fd;
                        if (sd_bus_message_read(reply, "h", &fd) < 0 || fcntl(fd, F_DUPFD_CLOEXEC, 3) < 0)
                                _exit(101);
                        opened++;
                }
                fprintf(stderr, "nobody opened %d peer connections, then: %s\n", opened, e ?: "(none)");
                char verdict = opened == 16 && e && strcmp(e, "org.vfiobroker.Broker1.Error.QuotaExceeded") == 0 ? 'y' : 'n';
                (void) !write(sv[1], &verdict, 1);
                (void) !read(sv[1], &verdict, 1);
                _exit(0);
        }
        char verdict = 0;
        assert_int_equal(read(sv[0], &verdict, 1), 1);
        assert_int_equal(verdict, 'y');

        /* Root is still served, on the bus and over a peer connection of its own. */
        sd_bus *peer = peer_from_fd(open_connection_fd(bus));
        assert_non_null(peer);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        assert_null(peer_call(peer, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0));
        sd_bus_flush_close_unref(peer);

        (void) !write(sv[0], "x", 1);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        close(sv[0]);
        close(sv[1]);
        sd_bus_flush_close_unref(bus);
}

/* Only the documented object path reaches a container: .../container/<id>, nothing below it. */
static void test_only_documented_paths(void **state) {
        sd_bus *bus = test_bus_open();
        _cleanup_free_ char *path = test_create_container(bus, "paths");
        const char *id = strrchr(path, '/') + 1;
        char bad[256];

        _cleanup_free_ char *label = test_get_string(bus, path, CONTAINER_IFACE, "Label", 's');
        assert_string_equal(label, "paths");
        snprintf(bad, sizeof(bad), "%s/x/%s", BROKER_CONTAINER_PREFIX, id);
        assert_string_equal(test_call(bus, bad, CONTAINER_IFACE, "Close", NULL, ""), "org.freedesktop.DBus.Error.UnknownObject");
        snprintf(bad, sizeof(bad), "%s/0%s", BROKER_CONTAINER_PREFIX, id);
        assert_string_equal(test_call(bus, bad, CONTAINER_IFACE, "Close", NULL, ""), "org.freedesktop.DBus.Error.UnknownObject");
        snprintf(bad, sizeof(bad), "%s/x/1", BROKER_GROUP_PREFIX);
        assert_non_null(test_call(bus, bad, "org.freedesktop.DBus.Properties", "Get", NULL, "ss", GROUP_IFACE, "Id"));
        assert_true(test_object_exists(bus, path));
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        sd_bus_flush_close_unref(bus);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_peer_identity),
                cmocka_unit_test(test_orphan_peer_closes),
                cmocka_unit_test(test_peer_connections_bounded_per_user),
                cmocka_unit_test(test_only_documented_paths),
        };
        return cmocka_run_group_tests_name("peer connection", tests, NULL, NULL);
}
