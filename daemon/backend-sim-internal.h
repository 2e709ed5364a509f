/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What backend-sim-device.c needs of backend-sim.c: the container's DMA mappings, as the device sees
 * them through the simulated IOMMU. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* A device DMA of size bytes at iova through the container's mappings: to_memory copies buf into the
 * mapped memory (needs VFIO_DMA_MAP_FLAG_WRITE), else the memory into buf (needs READ). Like an IOMMU,
 * it moves nothing unless every byte is mapped with the permission: -EFAULT when a byte is not mapped
 * (*ret_fault is its IOVA), -EACCES when it lacks the permission. */
int backend_sim_dma(BackendContainer *c, uint64_t iova, void *buf, size_t size, bool to_memory,
                    uint64_t *ret_fault);
