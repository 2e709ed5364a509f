/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A container: one VMM's IOMMU address space. Holds the backend container, the attached groups, the
 * DMA mappings and the memory they borrow. All checks that give a VMM a precise error happen here,
 * before the backend is asked; a failed request leaves the container exactly as it was. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "backend.h"
#include "broker.h"
#include "mapping-table.h"
#include "memory.h"

typedef struct Mapping {
        MappingTableNode node; /* IOVA interval */
        MemoryWindow *window;  /* borrowed: the daemon's view of the part of the VMM's file it lies in */
        /* The offset in the file (page-aligned) with BROKER_MAP_READ|WRITE in its low bits: 56 bytes
         * in all, malloc's 64-byte class, where a flags field of its own made it 80. */
        uint64_t offset_flags;
} Mapping;

#define MAPPING_FLAGS_MASK UINT64_C(3)

static inline uint64_t mapping_offset(const Mapping *m) {
        return m->offset_flags & ~MAPPING_FLAGS_MASK;
}

static inline uint32_t mapping_flags(const Mapping *m) {
        return (uint32_t) (m->offset_flags & MAPPING_FLAGS_MASK);
}

/* A range mapped in fixed-size granules that the VMM may discard and populate again (virtio-mem,
 * balloons): each populated granule is one Mapping of its own, because type1 removes mappings whole. */
typedef struct DiscardRegion {
        MappingTableNode node; /* IOVA interval of the whole region */
        MemoryWindow *window;  /* reference held for the region's life: Populate maps its granules in it */
        uint64_t offset;       /* in the file, of node.first */
        uint32_t flags;
        uint64_t granule;
} DiscardRegion;

struct Container {
        Broker *broker;
        Container *next, *prev;

        uint64_t id;
        char *path;   /* /org/vfiobroker/Broker1/container/<id> */
        char *owner;  /* unique bus name of the owning connection */
        uid_t uid;
        char *label;

        OwnerWatch *owner_watch; /* shared by every container of the same owner; see owner-watch.c */

        BackendContainer *backend;
        unsigned *groups;     /* attached group ids, sorted */
        size_t n_groups;

        BackendIommuInfo iommu; /* valid while n_groups > 0 */
        uint64_t dma_limit;     /* the kernel's limit of mappings for this container, UINT64_MAX if unknown */
        bool dirty_tracking;    /* VFIO_IOMMU_DIRTY_PAGES started */

        MappingTable mappings;
        MappingTable discardable; /* DiscardRegions; their populated granules are in mappings */
        MemoryPool *memory;

        char **stored_fds;    /* names this container has in the fd store (state store) */

        ChangeLink changed;   /* queued for coalesced change delivery (broker.c) */
        unsigned changed_mask;

        struct VfioUserServer *vfio_user_servers; /* devices served over vfio-user (vfio-user-server.c) */

        struct sd_event_source *memory_linger; /* reaps the memory pool's idle window (container.c) */

        /* The D-Bus face's (bus.c): changes of the mapping counters held back for a while. */
        uint64_t bus_counters_sent;       /* CLOCK_MONOTONIC of their last PropertiesChanged */
        unsigned bus_counters_held;       /* ContainerProperty bits waiting for bus_counters_timer */
        struct sd_event_source *bus_counters_timer;
};

/* Property bits for change notification. */
typedef enum ContainerProperty {
        CONTAINER_PROPERTY_GROUPS            = 1 << 0,
        CONTAINER_PROPERTY_MAPPINGS          = 1 << 1,
        CONTAINER_PROPERTY_MAPPED_BYTES      = 1 << 2,
        CONTAINER_PROPERTY_BALLOON_INHIBITED = 1 << 3,
        CONTAINER_PROPERTY_IOVA_RANGES       = 1 << 4,
        CONTAINER_PROPERTY_PAGE_SIZES        = 1 << 5,
        CONTAINER_PROPERTY_DMA_AVAILABLE     = 1 << 6,
        CONTAINER_PROPERTY_DIRTY_TRACKING    = 1 << 7,
        CONTAINER_PROPERTY_DISCARDABLE       = 1 << 8,
        _CONTAINER_PROPERTY_ALL              = (1 << 9) - 1,
        /* Not a property: the kernel objects the backend keeps changed (device fds), which only the
         * state store cares about. */
        CONTAINER_CHANGE_FDS                 = 1 << 16,
} ContainerProperty;

/* What every change of the mapping table reports. */
#define CONTAINER_CHANGE_MAPPINGS \
        (CONTAINER_PROPERTY_MAPPINGS | CONTAINER_PROPERTY_MAPPED_BYTES | CONTAINER_PROPERTY_DMA_AVAILABLE)

int container_new(Broker *b, const char *owner, uid_t uid, const char *label, Container **ret,
                  BrokerError *e);

/* A container a previous instance left behind (state.c): id and backend container given. */
int container_new_restored(Broker *b, uint64_t id, const char *owner, uid_t uid, const char *label,
                           BackendContainer *bc, const unsigned *groups, size_t n_groups, Container **ret,
                           BrokerError *e);
/* The restored container is whole again (mappings, regions, tracking): its watchers hear of it. */
void container_restore_done(Container *c);
/* Before an orderly exit that leaves c to the next instance: the kernel forgets the daemon's addresses
 * of every mapping (DMA goes on). */
void container_forget_vaddrs(Container *c);
/* Re-adds one mapping of a restored container. */
int container_restore_mapping(Container *c, unsigned region, uint64_t offset, uint64_t size, uint64_t iova,
                              uint32_t flags, BrokerError *e);

/* Close(), or the owner went away: the observers hear of it, then everything is unmapped, every group
 * detached, the memory released, and c freed. While the broker is handing over to its next instance,
 * the kernel objects are left as they are instead. */
void container_close(Container *c);

int container_attach_group(Container *c, unsigned group, BrokerError *e);
int container_detach_group(Container *c, unsigned group, BrokerError *e);
/* Returns the new device fd. */
int container_open_device(Container *c, const char *device, BrokerError *e);
int container_map(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                  BrokerError *e);
int container_unmap(Container *c, uint64_t iova, uint64_t size, BrokerError *e);

typedef struct UpdateUnmap {
        uint64_t iova, size;
} UpdateUnmap;

typedef struct UpdateMap {
        uint32_t memory; /* index into the fds */
        uint64_t offset, size, iova;
        uint32_t flags;
} UpdateMap;

/* Update(): the unmaps, then the maps, all or nothing. */
int container_update(Container *c, const UpdateUnmap *unmaps, size_t n_unmaps, const int *fds, size_t n_fds,
                     const UpdateMap *maps, size_t n_maps, BrokerError *e);

/* Dirty page tracking for migration (type1's VFIO_IOMMU_DIRTY_PAGES). The bitmaps go into a file the
 * VMM passes (fd, fd_offset): one bit per page of the smallest IOMMU page size, u64 words in host
 * order, bit 0 of word 0 is the page at iova. *ret_dirty gets the number of dirty pages. */
int container_set_dirty_tracking(Container *c, bool start, BrokerError *e);
int container_dirty_bitmap(Container *c, uint64_t iova, uint64_t size, uint64_t page_size, int fd,
                           uint64_t fd_offset, uint64_t *ret_dirty, BrokerError *e);
/* Unmap, and report the dirty pages of what was unmapped (the vIOMMU-during-migration case). */
int container_unmap_dirty(Container *c, uint64_t iova, uint64_t size, uint64_t page_size, int fd,
                          uint64_t fd_offset, uint64_t *ret_dirty, BrokerError *e);

/* PCI hot reset of a device of an attached group. Every group the reset touches must be attached to a
 * container of the same owner; otherwise Busy names the groups that block it. */
int container_hot_reset(Container *c, const char *device, BrokerError *e);

/* Coordinated discard (container-discard.c). MapDiscardable registers [iova, iova+size) backed by the
 * file at offset, in granules (a power of two, aligned like a mapping), populated or not; Discard
 * unmaps the populated granules of a range inside one region (before the VMM punches holes in its
 * memory), Populate maps the discarded ones again. Unmap of a range covering whole regions removes
 * them. */
int container_map_discardable(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                              uint64_t granule, bool populated, BrokerError *e);
int container_discard(Container *c, uint64_t iova, uint64_t size, BrokerError *e);
int container_populate(Container *c, uint64_t iova, uint64_t size, BrokerError *e);
/* Restart: one region as it was (its granule mappings come back as mappings). */
int container_restore_discardable(Container *c, unsigned region, uint64_t offset, uint64_t size, uint64_t iova,
                                  uint32_t flags, uint64_t granule, BrokerError *e);
/* Frees every region inside [first, last] (their granules must be gone already); true if any. */
bool container_discardable_remove(Container *c, uint64_t first, uint64_t last);

/* Shared by container*.c. Every check of a Map request (granule 0) or a MapDiscardable one, in the
 * order that gives the most specific error first; changes nothing. */
int container_check_map(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                        uint64_t granule, MemoryFileInfo *ret_info, BrokerError *e);
void container_mapping_free(Container *c, Mapping *m);
bool container_iova_usable(const Container *c, uint64_t first, uint64_t last);

static inline bool container_balloon_inhibited(const Container *c) {
        return c->n_groups > 0;
}

static inline size_t container_n_mappings(const Container *c) {
        return mapping_table_size(&c->mappings);
}

/* How many more mappings the kernel accepts (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL); 0 without a group. */
static inline uint32_t container_dma_available(const Container *c) {
        if (c->n_groups == 0)
                return 0;
        if (c->dma_limit == UINT64_MAX)
                return UINT32_MAX;
        return c->dma_limit > container_n_mappings(c) ? (uint32_t) (c->dma_limit - container_n_mappings(c)) : 0;
}

static inline uint64_t container_mapped_bytes(const Container *c) {
        return mapping_table_bytes(&c->mappings);
}
