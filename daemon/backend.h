/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The narrow interface between the broker's logic and the kernel.
 *
 * backend-vfio.c speaks to the legacy VFIO type1v2 container (/dev/vfio/vfio + /dev/vfio/N),
 * backend-sim.c models the same rules in memory. Nothing here knows about D-Bus, and nothing outside
 * backend-*.c issues a VFIO ioctl. The logic calls the backend only through the backend_*() wrappers
 * at the end of this file; the ops are the backends' side of them, named after the kernel operation
 * they stand for (map_dma is VFIO_IOMMU_MAP_DMA), never after the logic's container_*() API.
 *
 * Division of labour: container*.c checks every request against the broker's own mapping table and
 * the IOMMU info first (Overlap, WouldSplit, NotMapped, OutOfRange, Unaligned) so that a VMM gets a
 * precise error. The backend still enforces the kernel's rules on its own (the kernel does; the sim
 * must model them).
 *
 * The error contract: an op returns the kernel's negative errno and nothing else: -EEXIST overlap,
 * -EINVAL bad alignment/flags/range or an unmap that would split a mapping, -ENOSPC DMA entry limit
 * reached, -EBUSY, -EPERM not viable, -ENODEV no such device or no reset, -ENOENT no such group (the
 * sim returns what the kernel would in its place). A backend may log_debug() the detail (which of
 * its ioctls failed); the logic words the SPEC error once, in container-error.c, because only it
 * knows what the VMM asked for and what a VMM author can do about it.
 * Two exceptions take a BrokerError: backend_vfio_new()/backend_sim_new() and restore_container().
 * They run once, at startup, for the administrator's log rather than for a VMM, and their reasons
 * (the vfio modules are not loaded; which fd the store did not keep; a kernel without
 * VFIO_UPDATE_VADDR) are facts only the backend knows and no errno carries. */

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

        int (*new_container)(Backend *b, BackendContainer **ret);

        /* Tears everything down: unmaps all DMA (unpinning), detaches every group, closes every fd
         * the backend holds for this container. Never fails. Device fds already handed to a VMM keep
         * their group referenced in the kernel until the VMM closes them; the backend must then
         * report the group as busy (-EBUSY from attach) until it is really free. */
        void (*free_container)(BackendContainer *c);

        /* VFIO_GROUP_SET_CONTAINER; the first attach also selects the IOMMU model (VFIO_SET_IOMMU,
         * type1v2). -ENOENT no such group, -EBUSY in a container or open elsewhere (device fds of a
         * closed container), -EPERM not viable or refused by the IOMMU. */
        int (*attach_group)(BackendContainer *c, unsigned id);

        /* VFIO_GROUP_UNSET_CONTAINER. -EBUSY while device fds of this group are still open, -EINVAL if
         * the group is not in this container. */
        int (*detach_group)(BackendContainer *c, unsigned id);

        /* VFIO_IOMMU_GET_INFO. Valid only while at least one group is attached (-EINVAL before). */
        int (*get_iommu_info)(BackendContainer *c, BackendIommuInfo *ret);

        /* VFIO_IOMMU_MAP_DMA. vaddr is the daemon's own mapping of the VMM's memory. flags:
         * VFIO_DMA_MAP_FLAG_READ|WRITE. */
        int (*map_dma)(BackendContainer *c, uint64_t vaddr, uint64_t iova, uint64_t size, uint32_t flags);

        /* VFIO_IOMMU_UNMAP_DMA: unmaps exactly the mappings inside [iova, iova+size); *ret_unmapped gets
         * the bytes removed. */
        int (*unmap_dma)(BackendContainer *c, uint64_t iova, uint64_t size, uint64_t *ret_unmapped);

        /* VFIO_GROUP_GET_DEVICE_FD: a new device fd (O_CLOEXEC) for a device of an attached group.
         * -ENODEV no such device in the group, -EINVAL the group is not in this container. */
        int (*get_device_fd)(BackendContainer *c, unsigned group, const char *device);

        /* --- PCI hot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO / VFIO_DEVICE_PCI_HOT_RESET) --- */

        /* The groups a hot reset of this device (in an attached group) would touch, sorted and unique,
         * its own group included. -ENODEV (or -ENOTTY) when the device cannot be reset this way. */
        int (*get_hot_reset_groups)(BackendContainer *c, unsigned group, const char *device,
                                    unsigned **ret, size_t *ret_n);

        /* Resets; groups[i] is attached to owners[i] (containers of this backend, c among them).
         * -EINVAL when a group the reset touches is not given, -EBUSY when a device is in use. */
        int (*pci_hot_reset)(BackendContainer *c, unsigned group, const char *device,
                             BackendContainer *const *owners, const unsigned *groups, size_t n);

        /* --- dirty page tracking (VFIO_IOMMU_DIRTY_PAGES), for migration --- */

        int (*set_dirty_tracking)(BackendContainer *c, bool start);

        /* Fills bitmap (one bit per page_size page from iova, little-endian u64 words, zeroed by the
         * caller) for a range that cuts no mapping; page_size is the smallest IOMMU page size. */
        int (*get_dirty_bitmap)(BackendContainer *c, uint64_t iova, uint64_t size, uint64_t page_size,
                                uint64_t *bitmap);

        /* Unmap (as unmap_dma) and report the dirty pages of what was unmapped in bitmap. */
        int (*unmap_dma_dirty)(BackendContainer *c, uint64_t iova, uint64_t size, uint64_t page_size,
                               uint64_t *bitmap, uint64_t *ret_unmapped);

        /* --- restart (state.c) --- */

        /* The fds to keep across a restart; *ret is a new array of borrowed fds. */
        int (*get_fds)(BackendContainer *c, BackendFd **ret, size_t *ret_n);

        /* Rebuilds a container a previous instance of the daemon left behind, from the fds it stored
         * (the backend takes the fds it uses and sets their fd to -1) and the groups it had attached.
         * Words its own error (see above). */
        int (*restore_container)(Backend *b, BackendFd *fds, size_t n_fds, const unsigned *groups,
                                 size_t n_groups, BackendContainer **ret, BrokerError *e);

        /* After restore_container(): one mapping as it was, now at this daemon's address of the same
         * memory (type1: VFIO_IOMMU_MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR; DMA never stopped). */
        int (*update_dma_vaddr)(BackendContainer *c, uint64_t vaddr, uint64_t iova, uint64_t size, uint32_t flags);

        /* Before an orderly exit that leaves the container to the next instance: the kernel forgets the
         * daemon's address of the mapping but keeps the DMA going (VFIO_DMA_UNMAP_FLAG_VADDR). */
        int (*invalidate_dma_vaddr)(BackendContainer *c, uint64_t iova, uint64_t size);

        /* Frees the backend's side without touching the kernel objects, which the fd store keeps. */
        void (*abandon_container)(BackendContainer *c);

        /* VFIO_GROUP_GET_DEVICE_FD for the broker to drive the device itself (vfio-user): a device
         * behind backend-device.h's ops. Errors as get_device_fd. */
        int (*get_device)(BackendContainer *c, unsigned group, const char *device, BackendDevice **ret);

        /* After restore_container(): a device get_device opened before the restart, from the fds its
         * get_fds op gave (backend-device.h); it takes the fds it uses and sets their fd to -1. */
        int (*restore_device)(BackendContainer *c, unsigned group, const char *device, BackendFd *fds, size_t n_fds,
                              BackendDevice **ret);
} BackendOps;

struct Backend {
        const BackendOps *ops;
};

struct BackendContainer {
        Backend *backend;
};

int backend_vfio_new(const BrokerConfig *config, Backend **ret, BrokerError *e);
int backend_sim_new(const BrokerConfig *config, Backend **ret, BrokerError *e);

/* The logic's way into a backend: one wrapper per op, so that no caller dereferences ops. */

static inline const char *backend_name(Backend *b) {
        return b->ops->name;
}

static inline Backend *backend_free(Backend *b) {
        if (b)
                b->ops->free(b);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Backend *, backend_free);

static inline int backend_list_groups(Backend *b, BackendGroupInfo **ret, size_t *ret_n) {
        return b->ops->list_groups(b, ret, ret_n);
}

static inline int backend_get_group(Backend *b, unsigned id, BackendGroupInfo *ret) {
        return b->ops->get_group(b, id, ret);
}

static inline int backend_container_new(Backend *b, BackendContainer **ret) {
        return b->ops->new_container(b, ret);
}

static inline BackendContainer *backend_container_free(BackendContainer *c) {
        if (c)
                c->backend->ops->free_container(c);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(BackendContainer *, backend_container_free);

static inline int backend_container_attach_group(BackendContainer *c, unsigned id) {
        return c->backend->ops->attach_group(c, id);
}

static inline int backend_container_detach_group(BackendContainer *c, unsigned id) {
        return c->backend->ops->detach_group(c, id);
}

static inline int backend_container_get_iommu_info(BackendContainer *c, BackendIommuInfo *ret) {
        return c->backend->ops->get_iommu_info(c, ret);
}

static inline int backend_container_map(BackendContainer *c, uint64_t vaddr, uint64_t iova, uint64_t size,
                                        uint32_t flags) {
        return c->backend->ops->map_dma(c, vaddr, iova, size, flags);
}

static inline int backend_container_unmap(BackendContainer *c, uint64_t iova, uint64_t size,
                                          uint64_t *ret_unmapped) {
        return c->backend->ops->unmap_dma(c, iova, size, ret_unmapped);
}

static inline int backend_container_open_device(BackendContainer *c, unsigned group, const char *device) {
        return c->backend->ops->get_device_fd(c, group, device);
}

static inline int backend_container_hot_reset_groups(BackendContainer *c, unsigned group, const char *device,
                                                     unsigned **ret, size_t *ret_n) {
        return c->backend->ops->get_hot_reset_groups(c, group, device, ret, ret_n);
}

static inline int backend_container_hot_reset(BackendContainer *c, unsigned group, const char *device,
                                              BackendContainer *const *owners, const unsigned *groups, size_t n) {
        return c->backend->ops->pci_hot_reset(c, group, device, owners, groups, n);
}

static inline int backend_container_set_dirty_tracking(BackendContainer *c, bool start) {
        return c->backend->ops->set_dirty_tracking(c, start);
}

static inline int backend_container_dirty_bitmap(BackendContainer *c, uint64_t iova, uint64_t size,
                                                 uint64_t page_size, uint64_t *bitmap) {
        return c->backend->ops->get_dirty_bitmap(c, iova, size, page_size, bitmap);
}

static inline int backend_container_unmap_dirty(BackendContainer *c, uint64_t iova, uint64_t size,
                                                uint64_t page_size, uint64_t *bitmap, uint64_t *ret_unmapped) {
        return c->backend->ops->unmap_dma_dirty(c, iova, size, page_size, bitmap, ret_unmapped);
}

static inline int backend_container_get_fds(BackendContainer *c, BackendFd **ret, size_t *ret_n) {
        return c->backend->ops->get_fds(c, ret, ret_n);
}

static inline int backend_container_restore(Backend *b, BackendFd *fds, size_t n_fds, const unsigned *groups,
                                            size_t n_groups, BackendContainer **ret, BrokerError *e) {
        return b->ops->restore_container(b, fds, n_fds, groups, n_groups, ret, e);
}

static inline int backend_container_restore_mapping(BackendContainer *c, uint64_t vaddr, uint64_t iova,
                                                    uint64_t size, uint32_t flags) {
        return c->backend->ops->update_dma_vaddr(c, vaddr, iova, size, flags);
}

static inline int backend_container_invalidate_vaddr(BackendContainer *c, uint64_t iova, uint64_t size) {
        return c->backend->ops->invalidate_dma_vaddr(c, iova, size);
}

static inline void backend_container_abandon(BackendContainer *c) {
        c->backend->ops->abandon_container(c);
}

static inline int backend_container_get_device(BackendContainer *c, unsigned group, const char *device,
                                               BackendDevice **ret) {
        return c->backend->ops->get_device(c, group, device, ret);
}

static inline int backend_container_restore_device(BackendContainer *c, unsigned group, const char *device,
                                                   BackendFd *fds, size_t n_fds, BackendDevice **ret) {
        return c->backend->ops->restore_device(c, group, device, fds, n_fds, ret);
}
