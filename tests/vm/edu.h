/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* QEMU's edu device (1234:11e8) as a DMA engine, driven through a VFIO device fd.
 * BAR0: 0x80 source, 0x88 destination, 0x90 count, 0x98 command (bit 0 start, bit 1 edu-to-RAM).
 * The device's own buffer is at address 0x40000 (4 KiB); keep transfers below 4096 bytes (QEMU 7.2
 * aborts on a full-buffer transfer) and RAM addresses below 256 MiB (its 28-bit DMA mask). */

#include <stdint.h>

#define EDU_BUFFER 0x40000

typedef struct Edu {
        int fd;
        uint64_t bar0;   /* region offsets within the device fd */
        uint64_t config;
} Edu;

/* Finds BAR0 and config space and enables bus mastering. */
int edu_open(Edu *e, int device_fd);
/* RAM (IOVA) -> edu buffer at offset. */
int edu_dma_to_device(Edu *e, uint64_t iova, uint32_t buffer_offset, uint32_t count);
/* edu buffer at offset -> RAM (IOVA). */
int edu_dma_from_device(Edu *e, uint32_t buffer_offset, uint64_t iova, uint32_t count);
