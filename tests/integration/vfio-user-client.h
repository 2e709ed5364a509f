/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A small vfio-user client for the tests: what a VMM such as QEMU's vfio-user-pci sends, written
 * against daemon/vfio-user-protocol.h. Blocking, with 5 s timeouts. */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vfio-user-protocol.h"

int vu_connect_path(const char *path);

/* Sends one message with n_fds fds; *ret_id gets its id. 0 or -errno. */
int vu_send(int fd, uint16_t command, uint32_t flags, const void *payload, size_t size, const int *fds, size_t n_fds,
            uint16_t *ret_id);
/* Receives one message into h and buf (at most max payload bytes); the first fd that came with it in
 * *ret_fd (-1 if none). Returns the payload size, -ECONNRESET at EOF, -ETIMEDOUT, -E2BIG. */
ssize_t vu_recv(int fd, VfioUserHeader *h, void *buf, size_t max, int *ret_fd);
/* A command and its reply: the reply's errno (0 on success), or -errno for transport failures and
 * -EPROTO for a reply that does not match. */
int vu_call(int fd, uint16_t command, const void *payload, size_t size, const int *fds, size_t n_fds, void *reply,
            size_t reply_max, size_t *ret_size, int *ret_fd);
/* VERSION with QEMU's capabilities. */
int vu_negotiate(int fd);

int vu_dma_map(int fd, int mem, uint64_t offset, uint64_t iova, uint64_t size, uint32_t flags);
int vu_dma_unmap(int fd, uint64_t iova, uint64_t size, uint32_t flags);
int vu_region_write(int fd, uint32_t region, uint64_t offset, const void *data, uint32_t count);
int vu_region_read(int fd, uint32_t region, uint64_t offset, void *data, uint32_t count);

/* A 32-bit write to BAR0. */
int vu_bar0_write32(int fd, uint64_t reg, uint32_t v);
/* One DMA of an edu (QEMU's or the sim's) behind fd: src, dst, count, cmd (bit 1: to RAM); it completes
 * on a 100 ms virtual-clock timer, so the command register is polled. 0, -EIO or -ETIMEDOUT. */
int vu_edu_dma(int fd, uint64_t src, uint64_t dst, uint32_t count, uint32_t cmd);
