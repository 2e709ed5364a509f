/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The one place where a backend's errno becomes a SPEC error.
 *
 * Backends return the kernel's errno and nothing else (backend.h). What it means depends on what the
 * VMM asked for: EBUSY from an attach is a group held elsewhere, from a detach a device fd still
 * open, from a hot reset a device in use. The errnos the kernel documents for an operation become
 * their SPEC error here, worded for the VMM author; anything else is Kernel, with the operation as the
 * kernel calls it and the errno's name, so that it can be looked up in the kernel's source. */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "container-private.h"
#include "group.h"

/* The kernel's name of each operation; the sim models the same ioctls. */
static const char *const backend_operation_table[_BACKEND_OPERATION_MAX] = {
        [BACKEND_OPERATION_NEW_CONTAINER]        = "Opening a VFIO container",
        [BACKEND_OPERATION_ATTACH_GROUP]         = "VFIO_GROUP_SET_CONTAINER",
        [BACKEND_OPERATION_DETACH_GROUP]         = "VFIO_GROUP_UNSET_CONTAINER",
        [BACKEND_OPERATION_GET_IOMMU_INFO]       = "VFIO_IOMMU_GET_INFO",
        [BACKEND_OPERATION_MAP_DMA]              = "VFIO_IOMMU_MAP_DMA",
        [BACKEND_OPERATION_UPDATE_DMA_VADDR]     = "VFIO_IOMMU_MAP_DMA(VADDR)",
        [BACKEND_OPERATION_UNMAP_DMA]            = "VFIO_IOMMU_UNMAP_DMA",
        [BACKEND_OPERATION_UNMAP_DMA_DIRTY]      = "VFIO_IOMMU_UNMAP_DMA(GET_DIRTY_BITMAP)",
        [BACKEND_OPERATION_GET_DEVICE_FD]        = "VFIO_GROUP_GET_DEVICE_FD",
        [BACKEND_OPERATION_GET_HOT_RESET_GROUPS] = "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
        [BACKEND_OPERATION_PCI_HOT_RESET]        = "VFIO_DEVICE_PCI_HOT_RESET",
        [BACKEND_OPERATION_START_DIRTY_TRACKING] = "VFIO_IOMMU_DIRTY_PAGES(START)",
        [BACKEND_OPERATION_STOP_DIRTY_TRACKING]  = "VFIO_IOMMU_DIRTY_PAGES(STOP)",
        [BACKEND_OPERATION_GET_DIRTY_BITMAP]     = "VFIO_IOMMU_DIRTY_PAGES(GET_BITMAP)",
};

static const char *backend_operation_to_string(BackendOperation op) {
        assert(op >= 0 && op < _BACKEND_OPERATION_MAX);
        return backend_operation_table[op];
}

/* The errnos with a meaning of their own for this operation. Returns 0 for those without one. */
static int backend_error_specific(Container *c, BackendOperation op, int error, const BackendErrorContext *ctx,
                                  BrokerError *e) {
        uint64_t last = ctx->iova + (ctx->size - 1);
        Group *g;

        switch (op) {

        case BACKEND_OPERATION_ATTACH_GROUP:
                switch (error) {
                case -ENOENT:
                        return broker_error_set(e, BROKER_ERROR_NO_SUCH_GROUP,
                                                "VFIO group %u has gone from this host (its devices were unbound "
                                                "from vfio-pci meanwhile?).", ctx->group);
                case -EBUSY:
                        return broker_error_set(e, BROKER_ERROR_BUSY,
                                                "VFIO group %u is in use outside the broker, or device fds of "
                                                "a closed container are still open.", ctx->group);
                case -EPERM:
                        /* Either the group is not viable (after the caller re-read it), or the IOMMU
                         * cannot isolate its interrupts, which no binding of drivers changes. */
                        g = broker_find_group(c->broker, ctx->group);
                        if (!g || !g->viable)
                                return broker_error_set(e, BROKER_ERROR_NOT_VIABLE,
                                                        "The kernel reports VFIO group %u as not viable: bind "
                                                        "every device in it to vfio-pci.", ctx->group);
                        return broker_error_set_errno(e, error,
                                                      "The IOMMU refused VFIO group %u (no interrupt remapping? "
                                                      "see dmesg; vfio_iommu_type1.allow_unsafe_interrupts)",
                                                      ctx->group);
                }
                break;

        case BACKEND_OPERATION_DETACH_GROUP:
                switch (error) {
                case -EBUSY:
                        return broker_error_set(e, BROKER_ERROR_BUSY,
                                                "Device fds of VFIO group %u are still open; close every copy of "
                                                "them before detaching the group.", ctx->group);
                case -EINVAL:
                        return broker_error_set(e, BROKER_ERROR_NO_SUCH_GROUP,
                                                "VFIO group %u is not in this container.", ctx->group);
                }
                break;

        case BACKEND_OPERATION_MAP_DMA:
        case BACKEND_OPERATION_UPDATE_DMA_VADDR:
                switch (error) {
                case -EEXIST:
                        /* The broker's table saw no overlap: the kernel's state differs from it. */
                        return broker_error_set(e, BROKER_ERROR_OVERLAP,
                                                "The kernel reports a DMA mapping that overlaps IOVA range "
                                                "[0x%" PRIx64 ", 0x%" PRIx64 "].", ctx->iova, last);
                case -ENOSPC:
                        return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                                "The kernel's limit of DMA mappings per container is reached "
                                                "(%zu mappings, see DmaAvailable; every populated granule of a "
                                                "discardable region is one); merge mappings, use a larger "
                                                "granule or unmap some first.", container_n_mappings(c));
                case -ENOMEM:
                        return broker_error_set_errno(e, error,
                                                      "Pinning the memory for IOVA range [0x%" PRIx64 ", 0x%" PRIx64
                                                      "] failed (the daemon's RLIMIT_MEMLOCK, or host memory)",
                                                      ctx->iova, last);
                }
                break;

        case BACKEND_OPERATION_GET_DEVICE_FD:
                /* ENODEV: no such device in the group (older kernels: EINVAL). */
                if (error == -ENODEV || error == -ENOENT || error == -EINVAL)
                        return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE,
                                                "There is no device %s in VFIO group %u.", ctx->device, ctx->group);
                break;

        case BACKEND_OPERATION_GET_HOT_RESET_GROUPS:
                if (error == -ENODEV || error == -ENOTTY)
                        return broker_error_set(e, BROKER_ERROR_NOT_SUPPORTED,
                                                "Device %s cannot be reset with a PCI hot reset: it has neither a "
                                                "resettable slot nor a resettable bus (a root-bus device, for "
                                                "example); the kernel says %s.", ctx->device,
                                                strerrorname_np(-error) ?: "?");
                break;

        case BACKEND_OPERATION_PCI_HOT_RESET:
                if (error == -EBUSY)
                        return broker_error_set(e, BROKER_ERROR_BUSY,
                                                "The kernel could not take every device the reset of %s touches "
                                                "(one is in use, e.g. mmapped and faulting); try again.",
                                                ctx->device);
                break;

        default:
                break;
        }
        return 0;
}

int container_backend_error(Container *c, BackendOperation op, int error, const BackendErrorContext *ctx,
                            BrokerError *e) {
        static const BackendErrorContext none = {};
        const char *what = backend_operation_to_string(op);
        int r;

        assert(c);
        assert(error < 0);

        if (!ctx)
                ctx = &none;

        r = backend_error_specific(c, op, error, ctx, e);
        if (r < 0)
                return r;

        /* Unexpected: the operation, what it was about, and the errno by name. */
        switch (op) {
        case BACKEND_OPERATION_NEW_CONTAINER:
                return broker_error_set_errno(e, error, "%s failed%s", what,
                                              error == -EOPNOTSUPP ? " (the kernel's VFIO has no type1v2 IOMMU: "
                                              "load vfio_iommu_type1)" : "");
        case BACKEND_OPERATION_ATTACH_GROUP:
        case BACKEND_OPERATION_DETACH_GROUP:
                return broker_error_set_errno(e, error, "%s for VFIO group %u failed", what, ctx->group);
        case BACKEND_OPERATION_MAP_DMA:
        case BACKEND_OPERATION_UPDATE_DMA_VADDR:
        case BACKEND_OPERATION_UNMAP_DMA:
        case BACKEND_OPERATION_UNMAP_DMA_DIRTY:
        case BACKEND_OPERATION_GET_DIRTY_BITMAP:
                return broker_error_set_errno(e, error, "%s of IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] failed",
                                              what, ctx->iova, ctx->iova + (ctx->size - 1));
        case BACKEND_OPERATION_GET_DEVICE_FD:
                return broker_error_set_errno(e, error, "%s(%s) on VFIO group %u failed", what, ctx->device,
                                              ctx->group);
        case BACKEND_OPERATION_GET_HOT_RESET_GROUPS:
        case BACKEND_OPERATION_PCI_HOT_RESET:
                return broker_error_set_errno(e, error, "%s on %s failed", what, ctx->device);
        default:
                return broker_error_set_errno(e, error, "%s failed", what);
        }
}
