/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "fdstore.h"
#include "log.h"

int fdstore_connect(int *ret_fd) {
        const char *e = getenv("NOTIFY_SOCKET");
        union {
                struct sockaddr sa;
                struct sockaddr_un un;
        } sa = { .un.sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;
        size_t len;

        if (!e || (e[0] != '/' && e[0] != '@') || (len = strlen(e)) >= sizeof(sa.un.sun_path))
                return -EINVAL;
        memcpy(sa.un.sun_path, e, len);
        if (e[0] == '@')
                sa.un.sun_path[0] = 0; /* abstract namespace */
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, &sa.sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len)) < 0)
                return -errno;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

static int notify_send(int notify_fd, const char *msg, int fd) {
        struct iovec iov = { .iov_base = (char *) msg, .iov_len = strlen(msg) };
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

        if (fd >= 0) {
                mh.msg_control = &control;
                mh.msg_controllen = sizeof(control);
                struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh);
                cmsg->cmsg_level = SOL_SOCKET;
                cmsg->cmsg_type = SCM_RIGHTS;
                cmsg->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        }
        return sendmsg(notify_fd, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

int fdstore_push(int notify_fd, const char *name, int fd, bool poll) {
        char msg[160];
        int r;

        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s%s", name, poll ? "" : "\nFDPOLL=0");
        r = notify_send(notify_fd, msg, fd);
        if (r < 0)
                log_debug_errno(r, "Cannot store fd %s: %m", name);
        return r;
}

void fdstore_remove(int notify_fd, const char *name) {
        char msg[160];

        snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
        (void) notify_send(notify_fd, msg, -EBADF);
}
