/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Shared by the container*.c files only: the pieces of one concept that its files split between them. */

#include "container.h"

static inline uint64_t lowest_bit(uint64_t x) {
        return x & -x;
}

/* A new, unlinked mapping of [iova, iova+size) at offset of its memory; NULL without memory. */
Mapping *mapping_new(uint64_t iova, uint64_t size, uint64_t offset, uint32_t flags);

/* InvalidArgs for an empty range, OutOfRange for one that wraps around the address space. */
int container_check_range(uint64_t iova, uint64_t size, const char *what, BrokerError *e);

/* container-map.c: what a container's memory regions cost its owner (fds, address space). */
extern const MemoryPoolAccount container_memory_account;

/* container.c: allocation and the broker's list. */
int container_alloc(Broker *b, uint64_t id, const char *owner, uid_t uid, const char *label, Container **ret);
void container_unalloc(Container *c);
void container_link(Container *c);
int container_group_compare(const void *a, const void *b);
/* Re-reads IovaRanges, PageSizes and the mapping limit once the groups changed. */
int container_refresh_iommu(Container *c, BrokerError *e);

/* container-error.c: a backend's errno (backend.h) as the SPEC error, worded once for every caller. */
typedef enum BackendOperation {
        BACKEND_OPERATION_NEW_CONTAINER,
        BACKEND_OPERATION_ATTACH_GROUP,
        BACKEND_OPERATION_DETACH_GROUP,
        BACKEND_OPERATION_GET_IOMMU_INFO,
        BACKEND_OPERATION_MAP_DMA,
        BACKEND_OPERATION_UPDATE_DMA_VADDR,
        BACKEND_OPERATION_UNMAP_DMA,
        BACKEND_OPERATION_UNMAP_DMA_DIRTY,
        BACKEND_OPERATION_GET_DEVICE_FD,
        BACKEND_OPERATION_GET_HOT_RESET_GROUPS,
        BACKEND_OPERATION_PCI_HOT_RESET,
        BACKEND_OPERATION_START_DIRTY_TRACKING,
        BACKEND_OPERATION_STOP_DIRTY_TRACKING,
        BACKEND_OPERATION_GET_DIRTY_BITMAP,
        _BACKEND_OPERATION_MAX,
} BackendOperation;

/* What the operation was about, for the message; each operation reads the fields it has. */
typedef struct BackendErrorContext {
        unsigned group;      /* attach, detach, device fd */
        const char *device;  /* device fd, hot reset */
        uint64_t iova, size; /* map, unmap, dirty bitmap */
} BackendErrorContext;

/* Records the SPEC error for error (negative, from the backend) in e and returns the errno of its
 * code, like broker_error_set(); unexpected errnos become Kernel and are returned as they are. An
 * EPERM from attach means NotViable only if the group reads as not viable: re-read it first. */
int container_backend_error(Container *c, BackendOperation op, int error, const BackendErrorContext *ctx,
                            BrokerError *e);

/* container-device.c: the group of a device that c may use. */
int container_device_group(Container *c, const char *device, Group **ret, BrokerError *e);

/* The pinning transaction (container-map.c): charge the quota, borrow the memory, map it in the IOMMU,
 * enter the mapping in the table; on failure, what was done is undone in reverse and m is left
 * unlinked, its memory released. Every path that pins goes through it. m->node, m->offset and
 * m->flags are set by the caller. */
typedef enum PinKind {
        PIN_FD,       /* a request: memory from the caller's fd, within the quota */
        PIN_REGION,   /* memory the container holds already (a discardable region's granule), within the quota */
        PIN_RESTORE,  /* after a restart: memory from the fd store; the kernel still maps it, repoint it */
        PIN_ROLLBACK, /* a mapping a failed Update removed, back again: m->window is still held */
} PinKind;

typedef struct PinSource {
        PinKind kind;
        int fd;                     /* PIN_FD */
        const MemoryFileInfo *info; /* PIN_FD: as container_check_map() found it */
        unsigned region;            /* PIN_REGION, PIN_RESTORE: the memory region's id */
} PinSource;

int container_pin(Container *c, Mapping *m, const PinSource *src, BrokerError *e);

/* Removes every mapping inside [iova, last] (a range that cuts none) from the kernel and the table,
 * releasing its quota. With removed, the mappings (and so their memory) are handed to the caller, for
 * a rollback; without, they are freed. dirty_bitmap: the unmap reports dirty pages into it. */
int container_unpin_range(Container *c, uint64_t iova, uint64_t last, uint64_t *dirty_bitmap, Mapping ***removed,
                          size_t *n_removed, BrokerError *e);

/* Unmap()'s checks and its kernel work; the mappings go to *removed (see container_unpin_range()).
 * regions: discardable regions may be inside the range (Unmap) or not (Update). */
int container_unmap_internal(Container *c, uint64_t iova, uint64_t size, bool regions, uint64_t *dirty_bitmap,
                             Mapping ***removed, size_t *n_removed, BrokerError *e);
void container_mappings_release(Container *c, Mapping **l, size_t n);
/* After an Unmap: the memory goes, the regions inside the range go, and the watchers hear of it. */
void container_unmap_done(Container *c, Mapping **removed, size_t n_removed, uint64_t iova, uint64_t size);
