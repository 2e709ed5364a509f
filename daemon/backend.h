/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The narrow interface between the broker's logic and the kernel.
 *
 * backend-vfio.c speaks to the legacy VFIO type1v2 container (/dev/vfio/vfio + /dev/vfio/N),
 * backend-sim.c models the same rules in memory. Nothing here knows about D-Bus, and nothing outside
 * backend-*.c issues a VFIO ioctl.
 *
 * Division of labour: container.c checks every request against the broker's own mapping table and
 * the IOMMU info first (Overlap, WouldSplit, NotMapped, OutOfRange, Unaligned) so that a VMM gets a
 * precise error. The backend still enforces the kernel's rules on its own (the kernel does; the sim
 * must model them), and reports violations as the kernel's errno: -EEXIST overlap, -EINVAL bad
 * alignment/flags or an unmap that would split a mapping, -ENOSPC DMA entry limit reached, -EBUSY,
 * -EPERM not viable. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct Backend Backend;
typedef struct BackendContainer BackendContainer;
typedef struct BackendDevice BackendDevice; /* backend-device.h */
typedef struct BrokerConfig BrokerConfig;

typedef struct IovaRange {
        uint64_t first; /* inclusive */
        uint64_t last;  /* inclusive */
} IovaRange;

/* One VFIO group as found on the host. */
typedef struct BackendGroupInfo {
        unsigned id;
        char **devices; /* NULL-terminated, sorted, e.g. "0000:01:00.0" */
        bool viable;
} BackendGroupInfo;

void backend_group_info_free_many(BackendGroupInfo *infos, size_t n);

/* What the IOMMU reports once a container has its first group and the IOMMU model is set. */
typedef struct BackendIommuInfo {
        IovaRange *ranges; /* sorted, non-overlapping */
        size_t n_ranges;
        uint64_t page_sizes;    /* bitmap of supported IOMMU page sizes */
        uint32_t dma_available; /* mappings the kernel still accepts; UINT32_MAX if it does not say */
} BackendIommuInfo;

void backend_iommu_info_done(BackendIommuInfo *info);

/* An fd that carries kernel state across a daemon restart, under a name stable within its container
 * ("container", "group-3", "device-3-0"): the broker keeps it in systemd's fd store. */
typedef struct BackendFd {
        char name[48];
        int fd;       /* owned by the backend */
        bool poll;    /* false for VFIO group fds, which are not pollable (FDPOLL=0) */
} BackendFd;

typedef struct BackendOps {
        const char *name; /* the Manager's Backend property: "vfio-type1" or "sim" */

        void (*free)(Backend *b);

        /* All VFIO groups currently on the host, sorted by id. */
        int (*list_groups)(Backend *b, BackendGroupInfo **ret, size_t *ret_n);

        /* Re-reads one group (viability changes as drivers are bound). -ENOENT if it vanished. */
        int (*get_group)(Backend *b, unsigned id, BackendGroupInfo *ret);

        int (*container_new)(Backend *b, BackendContainer **ret, BrokerError *e);

        /* Tears everything down: unmaps all DMA (unpinning), detaches every group, closes every fd
         * the backend holds for this container. Never fails. Device fds already handed to a VMM keep
         * their group referenced in the kernel until the VMM closes them; the backend must then
         * report the group as busy (-EBUSY from attach) until it is really free. */
        void (*container_free)(BackendContainer *c);

        /* The first attach also selects the IOMMU model (VFIO_TYPE1v2_IOMMU). */
        int (*container_attach_group)(BackendContainer *c, unsigned id, BrokerError *e);

        /* -EBUSY while device fds of this group are still open. */
        int (*container_detach_group)(BackendContainer *c, unsigned id, BrokerError *e);

        /* Valid only while at least one group is attached. */
        int (*container_get_iommu_info)(BackendContainer *c, BackendIommuInfo *ret, BrokerError *e);

        /* vaddr is the daemon's own mapping of the VMM's memory. flags: VFIO_DMA_MAP_FLAG_READ|WRITE. */
        int (*container_map)(BackendContainer *c, uint64_t vaddr, uint64_t iova, uint64_t size,
                             uint32_t flags, BrokerError *e);

        /* Unmaps exactly the mappings inside [iova, iova+size); *ret_unmapped gets the bytes removed. */
        int (*container_unmap)(BackendContainer *c, uint64_t iova, uint64_t size,
                               uint64_t *ret_unmapped, BrokerError *e);

        /* Returns a new device fd (O_CLOEXEC) for a device of an attached group. */
        int (*container_open_device)(BackendContainer *c, unsigned group, const char *device,
                                     BrokerError *e);

        /* --- PCI hot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO / VFIO_DEVICE_PCI_HOT_RESET) --- */

        /* The groups a hot reset of this device (in an attached group) would touch, sorted and unique,
         * its own group included. -ENODEV (NotSupported) when the device cannot be reset this way. */
        int (*container_hot_reset_groups)(BackendContainer *c, unsigned group, const char *device,
                                          unsigned **ret, size_t *ret_n, BrokerError *e);

        /* Resets; groups[i] is attached to owners[i] (containers of this backend, c among them). */
        int (*container_hot_reset)(BackendContainer *c, unsigned group, const char *device,
                                   BackendContainer *const *owners, const unsigned *groups, size_t n,
                                   BrokerError *e);

        /* --- dirty page tracking (VFIO_IOMMU_DIRTY_PAGES), for migration --- */

        int (*container_dirty_tracking)(BackendContainer *c, bool start, BrokerError *e);

        /* Fills bitmap (one bit per page_size page from iova, little-endian u64 words, zeroed by the
         * caller) for a range that cuts no mapping; page_size is the smallest IOMMU page size. */
        int (*container_dirty_bitmap)(BackendContainer *c, uint64_t iova, uint64_t size, uint64_t page_size,
                                      uint64_t *bitmap, BrokerError *e);

        /* Unmap (as container_unmap) and report the dirty pages of what was unmapped in bitmap. */
        int (*container_unmap_dirty)(BackendContainer *c, uint64_t iova, uint64_t size, uint64_t page_size,
                                     uint64_t *bitmap, uint64_t *ret_unmapped, BrokerError *e);

        /* --- restart (state.c) --- */

        /* The fds to keep across a restart; *ret is a new array of borrowed fds. */
        int (*container_get_fds)(BackendContainer *c, BackendFd **ret, size_t *ret_n);

        /* Rebuilds a container a previous instance of the daemon left behind, from the fds it stored
         * (the backend takes the fds it uses and sets their fd to -1) and the groups it had attached. */
        int (*container_restore)(Backend *b, BackendFd *fds, size_t n_fds, const unsigned *groups,
                                 size_t n_groups, BackendContainer **ret, BrokerError *e);

        /* After container_restore(): one mapping as it was, now at this daemon's address of the same
         * memory (type1: VFIO_DMA_MAP_FLAG_VADDR; DMA never stopped). */
        int (*container_restore_mapping)(BackendContainer *c, uint64_t vaddr, uint64_t iova, uint64_t size,
                                         uint32_t flags, BrokerError *e);

        /* Before an orderly exit that leaves the container to the next instance: the kernel forgets the
         * daemon's address of the mapping but keeps the DMA going (VFIO_DMA_UNMAP_FLAG_VADDR). */
        int (*container_invalidate_vaddr)(BackendContainer *c, uint64_t iova, uint64_t size);

        /* Frees the backend's side without touching the kernel objects, which the fd store keeps. */
        void (*container_abandon)(BackendContainer *c);

        /* A device of an attached group for the broker to drive itself (vfio-user), backend-device.h. */
        int (*container_device_open)(BackendContainer *c, unsigned group, const char *device,
                                     BackendDevice **ret, BrokerError *e);
} BackendOps;

struct Backend {
        const BackendOps *ops;
};

struct BackendContainer {
        Backend *backend;
};

int backend_vfio_new(const BrokerConfig *config, Backend **ret, BrokerError *e);
int backend_sim_new(const BrokerConfig *config, Backend **ret, BrokerError *e);

static inline const char *backend_name(Backend *b) {
        return b->ops->name;
}

static inline Backend *backend_free(Backend *b) {
        if (b)
                b->ops->free(b);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Backend *, backend_free);

static inline BackendContainer *backend_container_free(BackendContainer *c) {
        if (c)
                c->backend->ops->container_free(c);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(BackendContainer *, backend_container_free);
