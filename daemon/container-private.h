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

/* container.c: allocation and the broker's list. */
int container_alloc(Broker *b, uint64_t id, const char *owner, uid_t uid, const char *label, Container **ret);
void container_unalloc(Container *c);
void container_link(Container *c);
int container_group_compare(const void *a, const void *b);
/* Re-reads IovaRanges, PageSizes and the mapping limit once the groups changed. */
int container_refresh_iommu(Container *c, BrokerError *e);

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
        PIN_ROLLBACK, /* a mapping a failed Update removed, back again: m->region is still held */
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
