/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A device of an attached group, driven by the broker itself (for the vfio-user server) instead of
 * being handed to a VMM as an fd. The operations are the VFIO device ioctls (VFIO_DEVICE_GET_INFO,
 * _GET_REGION_INFO, _GET_IRQ_INFO, _SET_IRQS, _RESET, and pread/pwrite on regions), with the kernel's
 * flag values and region/irq indexes (VFIO_PCI_*_INDEX):
 *  - backend-vfio-device.c issues them on a VFIO device fd of the container;
 *  - backend-sim-device.c models an edu-compatible PCI device whose DMA goes through the sim
 *    container's mappings.
 * Errors are negative errnos (they go back to the vfio-user client as they are). Nothing here knows
 * about vfio-user or D-Bus. */

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

typedef struct BackendDeviceInfo {
        uint32_t flags;       /* VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI */
        uint32_t num_regions;
        uint32_t num_irqs;
} BackendDeviceInfo;

typedef struct BackendSparseArea {
        uint64_t offset; /* from the region's start */
        uint64_t size;
} BackendSparseArea;

typedef struct BackendRegionInfo {
        uint32_t flags;            /* VFIO_REGION_INFO_FLAG_READ | _WRITE | _MMAP */
        uint64_t size;
        int mmap_fd;               /* with FLAG_MMAP: borrowed fd a client may mmap(), else -1 */
        uint64_t mmap_offset;      /* the region's offset in mmap_fd */
        BackendSparseArea *areas;  /* with FLAG_MMAP: the parts that may be mapped (owned; free()) */
        size_t n_areas;
} BackendRegionInfo;

typedef struct BackendIrqInfo {
        uint32_t flags; /* VFIO_IRQ_INFO_EVENTFD | _MASKABLE | _AUTOMASKED | _NORESIZE */
        uint32_t count;
} BackendIrqInfo;

typedef struct BackendDeviceOps {
        void (*free)(BackendDevice *d);
        int (*get_info)(BackendDevice *d, BackendDeviceInfo *ret);
        int (*region_info)(BackendDevice *d, uint32_t index, BackendRegionInfo *ret);
        int (*region_read)(BackendDevice *d, uint32_t index, uint64_t offset, void *buf, size_t size);
        int (*region_write)(BackendDevice *d, uint32_t index, uint64_t offset, const void *buf, size_t size);
        int (*irq_info)(BackendDevice *d, uint32_t index, BackendIrqInfo *ret);
        /* VFIO_DEVICE_SET_IRQS. fds: count eventfds (borrowed; -1 de-assigns) with DATA_EVENTFD, else
         * NULL; bools: count bytes with DATA_BOOL, else NULL. The eventfds go to the device as they
         * are: interrupts never pass through the broker. */
        int (*set_irqs)(BackendDevice *d, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                        const int *fds, const uint8_t *bools);
        int (*reset)(BackendDevice *d);
        /* The fds that carry the device's state across a daemon restart (borrowed; *ret is a new
         * array): the device fd itself, which must never close while a client is served (vfio-pci
         * resets the device and drops its interrupt eventfds on the last close), and whatever the
         * backend keeps of its own (the sim's registers, its INTx eventfd). A name changes when its fd
         * does. */
        int (*get_fds)(BackendDevice *d, BackendFd **ret, size_t *ret_n);
} BackendDeviceOps;

struct BackendDevice {
        const BackendDeviceOps *ops;
};

/* The backends' get_device op (BackendOps): a device fd of the container (get_device_fd) driven with
 * ioctls, and the sim's edu on a sim device fd. Errors as get_device_fd. */
int backend_vfio_device_get(BackendContainer *c, unsigned group, const char *device, BackendDevice **ret);
int backend_sim_device_get(BackendContainer *c, unsigned group, const char *device, BackendDevice **ret);
/* The backends' restore_device op: the device again from the fds get_fds gave (it takes those it uses
 * and sets their fd to -1). -EBADF when a needed fd is missing or is not what it should be. */
int backend_vfio_device_restore(BackendContainer *c, unsigned group, const char *device, BackendFd *fds,
                                size_t n_fds, BackendDevice **ret);
int backend_sim_device_restore(BackendContainer *c, unsigned group, const char *device, BackendFd *fds,
                               size_t n_fds, BackendDevice **ret);

static inline BackendDevice *backend_device_free(BackendDevice *d) {
        if (d)
                d->ops->free(d);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(BackendDevice *, backend_device_free);

static inline int backend_device_get_fds(BackendDevice *d, BackendFd **ret, size_t *ret_n) {
        return d->ops->get_fds(d, ret, ret_n);
}

static inline void backend_region_info_done(BackendRegionInfo *info) {
        free(info->areas);
        info->areas = NULL;
        info->n_areas = 0;
}
