/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "edu.h"

static int region_offset(int fd, unsigned index, uint64_t *ret) {
        struct vfio_region_info info = { .argsz = sizeof(info), .index = index };

        if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &info) < 0)
                return -errno;
        *ret = info.offset;
        return 0;
}

static int write32(Edu *e, uint64_t reg, uint32_t v) {
        return pwrite(e->fd, &v, 4, (off_t) (e->bar0 + reg)) == 4 ? 0 : -EIO;
}

static int read32(Edu *e, uint64_t reg, uint32_t *v) {
        return pread(e->fd, v, 4, (off_t) (e->bar0 + reg)) == 4 ? 0 : -EIO;
}

int edu_open(Edu *e, int device_fd) {
        uint16_t cmd;
        int r;

        e->fd = device_fd;
        r = region_offset(device_fd, VFIO_PCI_BAR0_REGION_INDEX, &e->bar0);
        if (r < 0)
                return r;
        r = region_offset(device_fd, VFIO_PCI_CONFIG_REGION_INDEX, &e->config);
        if (r < 0)
                return r;
        /* PCI command register, bit 2: bus master. Without it the device cannot DMA at all. */
        if (pread(device_fd, &cmd, 2, (off_t) (e->config + 4)) != 2)
                return -EIO;
        cmd |= 0x6; /* memory space + bus master */
        if (pwrite(device_fd, &cmd, 2, (off_t) (e->config + 4)) != 2)
                return -EIO;
        return 0;
}

static int edu_dma(Edu *e, uint64_t src, uint64_t dst, uint32_t count, uint32_t cmd) {
        uint32_t status = 1;

        /* A 4-byte write sets the whole 64-bit register; every address here is below 256 MiB. */
        if (write32(e, 0x80, (uint32_t) src) < 0 || write32(e, 0x88, (uint32_t) dst) < 0 ||
            write32(e, 0x90, count) < 0 || write32(e, 0x98, cmd | 1) < 0)
                return -EIO;
        /* The edu device completes a transfer on a 100 ms virtual-clock timer. */
        for (int i = 0; i < 500 && (status & 1); i++) {
                struct timespec ts = { 0, 10 * 1000 * 1000 };
                nanosleep(&ts, NULL);
                if (read32(e, 0x98, &status) < 0)
                        return -EIO;
        }
        return status & 1 ? -ETIMEDOUT : 0;
}

int edu_dma_to_device(Edu *e, uint64_t iova, uint32_t buffer_offset, uint32_t count) {
        return edu_dma(e, iova, EDU_BUFFER + buffer_offset, count, 0);
}

int edu_dma_from_device(Edu *e, uint32_t buffer_offset, uint64_t iova, uint32_t count) {
        return edu_dma(e, EDU_BUFFER + buffer_offset, iova, count, 2);
}
