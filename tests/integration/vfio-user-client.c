/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "vfio-user-client.h"

static uint16_t next_id = 1;

int vu_connect_path(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return -errno;
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

int vu_send(int fd, uint16_t command, uint32_t flags, const void *payload, size_t size, const int *fds, size_t n_fds,
            uint16_t *ret_id) {
        VfioUserHeader h = { .msg_id = next_id++, .command = command, .msg_size = (uint32_t) (sizeof(h) + size),
                             .flags = flags };
        struct iovec iov[2] = { { &h, sizeof(h) }, { (void *) payload, size } };
        uint8_t control[CMSG_SPACE(sizeof(int) * 253)] = {};
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = size > 0 ? 2 : 1 };

        if (n_fds > 253)
                return -EINVAL;
        if (n_fds > 0) {
                struct cmsghdr *c;
                mh.msg_control = control;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
        }
        if (ret_id)
                *ret_id = h.msg_id;
        if (sendmsg(fd, &mh, MSG_NOSIGNAL) != (ssize_t) (sizeof(h) + size))
                return -errno;
        return 0;
}

ssize_t vu_recv(int fd, VfioUserHeader *h, void *buf, size_t max, int *ret_fd) {
        uint8_t control[CMSG_SPACE(sizeof(int) * 4)];
        size_t have = 0;
        uint8_t *all = malloc(sizeof(*h) + max);
        ssize_t n;

        if (!all)
                return -ENOMEM;
        if (ret_fd)
                *ret_fd = -1;
        for (;;) {
                struct pollfd p = { fd, POLLIN, 0 };
                size_t want = have < sizeof(*h) ? sizeof(*h) : ((VfioUserHeader *) all)->msg_size;
                struct iovec iov = { all + have, want - have };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                                     .msg_controllen = sizeof(control) };

                if (have >= sizeof(*h) && have >= want)
                        break;
                if (poll(&p, 1, 5000) <= 0) {
                        free(all);
                        return -ETIMEDOUT;
                }
                n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
                if (n <= 0) {
                        free(all);
                        return -ECONNRESET;
                }
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                        if (c->cmsg_type == SCM_RIGHTS && ret_fd)
                                memcpy(ret_fd, CMSG_DATA(c), sizeof(int));
                have += (size_t) n;
                if (have == sizeof(*h) && (((VfioUserHeader *) all)->msg_size > sizeof(*h) + max ||
                                           ((VfioUserHeader *) all)->msg_size < sizeof(*h))) {
                        free(all);
                        return -E2BIG;
                }
        }
        memcpy(h, all, sizeof(*h));
        memcpy(buf, all + sizeof(*h), have - sizeof(*h));
        free(all);
        return (ssize_t) (have - sizeof(*h));
}

int vu_call(int fd, uint16_t command, const void *payload, size_t size, const int *fds, size_t n_fds, void *reply,
            size_t reply_max, size_t *ret_size, int *ret_fd) {
        uint8_t scratch[256];
        VfioUserHeader h;
        uint16_t id;
        ssize_t n;
        int r;

        r = vu_send(fd, command, 0, payload, size, fds, n_fds, &id);
        if (r < 0)
                return r;
        n = vu_recv(fd, &h, reply ?: scratch, reply ? reply_max : sizeof(scratch), ret_fd);
        if (n < 0)
                return (int) n;
        if (h.msg_id != id || h.command != command ||
            (h.flags & VFIO_USER_FLAGS_TYPE_MASK) != VFIO_USER_FLAGS_TYPE_REPLY)
                return -EPROTO;
        if (ret_size)
                *ret_size = (size_t) n;
        if (h.flags & VFIO_USER_FLAGS_ERROR)
                return n == 0 && h.error_no > 0 ? (int) h.error_no : -EPROTO;
        return 0;
}

int vu_negotiate(int fd) {
        static const char caps[] = "{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,"
                                   "\"pgsizes\":4096,\"max_dma_maps\":65535,\"write_multiple\":true,"
                                   "\"migration\":{\"pgsize\":4096,\"max_bitmap_size\":1048576}}}";
        uint8_t msg[sizeof(VfioUserVersion) + sizeof(caps)];
        VfioUserVersion v = { VFIO_USER_MAJOR, VFIO_USER_MINOR };
        uint8_t reply[1024];
        size_t n = 0;

        memcpy(msg, &v, sizeof(v));
        memcpy(msg + sizeof(v), caps, sizeof(caps));
        return vu_call(fd, VFIO_USER_VERSION, msg, sizeof(msg), NULL, 0, reply, sizeof(reply), &n, NULL);
}

int vu_dma_map(int fd, int mem, uint64_t offset, uint64_t iova, uint64_t size, uint32_t flags) {
        VfioUserDmaMap m = { sizeof(m), flags, offset, iova, size };
        return vu_call(fd, VFIO_USER_DMA_MAP, &m, sizeof(m), mem >= 0 ? &mem : NULL, mem >= 0, NULL, 0, NULL, NULL);
}

int vu_dma_unmap(int fd, uint64_t iova, uint64_t size, uint32_t flags) {
        VfioUserDmaUnmap u = { sizeof(u), flags, iova, size }, reply;
        size_t n = 0;
        int r = vu_call(fd, VFIO_USER_DMA_UNMAP, &u, sizeof(u), NULL, 0, &reply, sizeof(reply), &n, NULL);
        if (r == 0 && n != sizeof(reply))
                return -EPROTO;
        return r;
}

int vu_region_write(int fd, uint32_t region, uint64_t offset, const void *data, uint32_t count) {
        uint8_t msg[sizeof(VfioUserRegionAccess) + 64];
        VfioUserRegionAccess a = { offset, region, count };

        if (count > 64)
                return -EINVAL;
        memcpy(msg, &a, sizeof(a));
        memcpy(msg + sizeof(a), data, count);
        return vu_call(fd, VFIO_USER_REGION_WRITE, msg, sizeof(a) + count, NULL, 0, NULL, 0, NULL, NULL);
}

int vu_region_read(int fd, uint32_t region, uint64_t offset, void *data, uint32_t count) {
        uint8_t reply[sizeof(VfioUserRegionAccess) + 4096];
        VfioUserRegionAccess a = { offset, region, count };
        size_t n = 0;
        int r;

        if (count > 4096)
                return -EINVAL;
        r = vu_call(fd, VFIO_USER_REGION_READ, &a, sizeof(a), NULL, 0, reply, sizeof(reply), &n, NULL);
        if (r == 0) {
                if (n != sizeof(a) + count)
                        return -EPROTO;
                memcpy(data, reply + sizeof(a), count);
        }
        return r;
}

int vu_bar0_write32(int fd, uint64_t reg, uint32_t v) {
        return vu_region_write(fd, VFIO_USER_PCI_BAR0_REGION_INDEX, reg, &v, 4);
}

int vu_edu_dma(int fd, uint64_t src, uint64_t dst, uint32_t count, uint32_t cmd) {
        uint32_t status = 1;

        if (vu_bar0_write32(fd, 0x80, (uint32_t) src) || vu_bar0_write32(fd, 0x88, (uint32_t) dst) ||
            vu_bar0_write32(fd, 0x90, count) || vu_bar0_write32(fd, 0x98, cmd | 1))
                return -EIO;
        for (int i = 0; i < 500 && (status & 1); i++) {
                struct timespec ts = { 0, 10 * 1000 * 1000 };
                nanosleep(&ts, NULL);
                if (vu_region_read(fd, VFIO_USER_PCI_BAR0_REGION_INDEX, 0x98, &status, 4))
                        return -EIO;
        }
        return status & 1 ? -ETIMEDOUT : 0;
}
