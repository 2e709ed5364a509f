/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A VFIO device driven by the broker: ioctls on a device fd of the container (Linux's
 * Documentation/driver-api/vfio.rst). The device fd keeps its group busy in the kernel for as long as
 * the device is served, exactly like a device fd handed to a VMM. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/vfio.h>

#include "backend-device.h"
#include "log.h"

typedef struct VfioDevice {
        BackendDevice base;
        int fd;
        uint32_t num_regions;
} VfioDevice;

static void vfio_device_free(BackendDevice *d) {
        VfioDevice *v = (VfioDevice *) d;

        safe_close(v->fd);
        free(v);
}

static int vfio_device_get_info(BackendDevice *d, BackendDeviceInfo *ret) {
        VfioDevice *v = (VfioDevice *) d;
        struct vfio_device_info info = { .argsz = sizeof(info) };

        if (ioctl(v->fd, VFIO_DEVICE_GET_INFO, &info) < 0)
                return -errno;
        *ret = (BackendDeviceInfo) {
                .flags = info.flags & (VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI),
                .num_regions = info.num_regions,
                .num_irqs = info.num_irqs,
        };
        return 0;
}

/* VFIO_DEVICE_GET_REGION_INFO with its capability chain (the kernel asks for a larger argsz when the
 * capabilities do not fit). */
static int region_info_get(VfioDevice *v, uint32_t index, struct vfio_region_info **ret) {
        _cleanup_free_ struct vfio_region_info *info = NULL;
        uint32_t argsz = sizeof(*info);

        for (unsigned attempt = 0; attempt < 3; attempt++) {
                struct vfio_region_info *n = realloc(info, argsz);
                if (!n)
                        return -ENOMEM;
                info = n;
                memset(info, 0, argsz);
                info->argsz = argsz;
                info->index = index;
                if (ioctl(v->fd, VFIO_DEVICE_GET_REGION_INFO, info) < 0)
                        return -errno;
                if (info->argsz <= argsz) {
                        *ret = TAKE_PTR(info);
                        return 0;
                }
                if (info->argsz > 65536)
                        return -E2BIG;
                argsz = info->argsz;
        }
        return -EAGAIN;
}

static int vfio_device_region_info(BackendDevice *d, uint32_t index, BackendRegionInfo *ret) {
        VfioDevice *v = (VfioDevice *) d;
        _cleanup_free_ struct vfio_region_info *info = NULL;
        const struct vfio_region_info_cap_sparse_mmap *sparse = NULL;
        int r;

        r = region_info_get(v, index, &info);
        if (r < 0)
                return r;

        *ret = (BackendRegionInfo) {
                .flags = info->flags & (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE),
                .size = info->size,
                .mmap_fd = -EBADF,
        };

        /* Only BARs are offered for mmap: config space is always emulated by the kernel, and a VMM maps
         * the ROM and VGA regions through reads anyway. */
        if (!(info->flags & VFIO_REGION_INFO_FLAG_MMAP) || index > VFIO_PCI_BAR5_REGION_INDEX || info->size == 0)
                return 0;

        if (info->flags & VFIO_REGION_INFO_FLAG_CAPS)
                for (uint32_t off = info->cap_offset, hops = 0; off != 0 && hops < 64; hops++) {
                        const struct vfio_info_cap_header *h;

                        if (off < sizeof(*info) || off + sizeof(*h) > info->argsz)
                                break;
                        h = (const void *) ((const uint8_t *) info + off);
                        if (h->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP &&
                            off + sizeof(*sparse) <= info->argsz) {
                                sparse = (const void *) h;
                                if (off + sizeof(*sparse) + (uint64_t) sparse->nr_areas * sizeof(sparse->areas[0]) >
                                    info->argsz)
                                        sparse = NULL;
                                break;
                        }
                        off = h->next;
                }

        if (sparse) {
                /* The kernel leaves out what must trap, such as the MSI-X table. */
                ret->areas = calloc(sparse->nr_areas ? sparse->nr_areas : 1, sizeof(BackendSparseArea));
                if (!ret->areas)
                        return -ENOMEM;
                for (uint32_t i = 0; i < sparse->nr_areas; i++)
                        if (sparse->areas[i].size > 0)
                                ret->areas[ret->n_areas++] = (BackendSparseArea) {
                                        sparse->areas[i].offset, sparse->areas[i].size };
                if (ret->n_areas == 0) {
                        backend_region_info_done(ret);
                        return 0;
                }
        } else {
                ret->areas = calloc(1, sizeof(BackendSparseArea));
                if (!ret->areas)
                        return -ENOMEM;
                ret->areas[0] = (BackendSparseArea) { 0, info->size };
                ret->n_areas = 1;
        }
        ret->flags |= VFIO_REGION_INFO_FLAG_MMAP;
        ret->mmap_fd = v->fd;
        ret->mmap_offset = info->offset;
        return 0;
}

static int region_offset(VfioDevice *v, uint32_t index, uint64_t offset, size_t size, uint32_t need,
                         uint64_t *ret) {
        _cleanup_free_ struct vfio_region_info *info = NULL;
        int r;

        r = region_info_get(v, index, &info);
        if (r < 0)
                return r;
        if (!(info->flags & need))
                return -EINVAL;
        if (offset > info->size || size > info->size - offset)
                return -EINVAL;
        *ret = info->offset + offset;
        return 0;
}

/* vfio-pci does accesses of the size asked for, as a CPU would (1, 2, 4 or 8 bytes at a time). */
static int region_access(BackendDevice *d, uint32_t index, uint64_t offset, void *rbuf, const void *wbuf,
                         size_t size) {
        VfioDevice *v = (VfioDevice *) d;
        uint64_t pos;
        ssize_t n;
        int r;

        r = region_offset(v, index, offset, size, wbuf ? VFIO_REGION_INFO_FLAG_WRITE : VFIO_REGION_INFO_FLAG_READ,
                          &pos);
        if (r < 0)
                return r;
        n = wbuf ? pwrite(v->fd, wbuf, size, (off_t) pos) : pread(v->fd, rbuf, size, (off_t) pos);
        if (n < 0)
                return -errno;
        return n == (ssize_t) size ? 0 : -EIO;
}

static int vfio_device_region_read(BackendDevice *d, uint32_t index, uint64_t offset, void *buf, size_t size) {
        return region_access(d, index, offset, buf, NULL, size);
}

static int vfio_device_region_write(BackendDevice *d, uint32_t index, uint64_t offset, const void *buf,
                                    size_t size) {
        return region_access(d, index, offset, NULL, buf, size);
}

static int vfio_device_irq_info(BackendDevice *d, uint32_t index, BackendIrqInfo *ret) {
        VfioDevice *v = (VfioDevice *) d;
        struct vfio_irq_info info = { .argsz = sizeof(info), .index = index };

        if (ioctl(v->fd, VFIO_DEVICE_GET_IRQ_INFO, &info) < 0)
                return -errno;
        *ret = (BackendIrqInfo) { .flags = info.flags, .count = info.count };
        return 0;
}

static int vfio_device_set_irqs(BackendDevice *d, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                                const int *fds, const uint8_t *bools) {
        VfioDevice *v = (VfioDevice *) d;
        _cleanup_free_ struct vfio_irq_set *set = NULL;
        size_t data = 0;

        if (flags & VFIO_IRQ_SET_DATA_EVENTFD)
                data = (size_t) count * sizeof(int32_t);
        else if (flags & VFIO_IRQ_SET_DATA_BOOL)
                data = count;
        if (data > 65536 * sizeof(int32_t))
                return -EINVAL;

        set = calloc(1, sizeof(*set) + data);
        if (!set)
                return -ENOMEM;
        *set = (struct vfio_irq_set) {
                .argsz = (uint32_t) (sizeof(*set) + data),
                .flags = flags,
                .index = index,
                .start = start,
                .count = count,
        };
        if (flags & VFIO_IRQ_SET_DATA_EVENTFD)
                for (uint32_t i = 0; i < count; i++) {
                        int32_t fd = fds ? fds[i] : -1;
                        memcpy(set->data + i * sizeof(int32_t), &fd, sizeof(fd));
                }
        else if (flags & VFIO_IRQ_SET_DATA_BOOL)
                memcpy(set->data, bools, count);

        /* The kernel takes its own reference to each eventfd: the client's fds go to the device as they
         * are, and interrupts never pass through the broker. */
        if (ioctl(v->fd, VFIO_DEVICE_SET_IRQS, set) < 0)
                return -errno;
        return 0;
}

static int vfio_device_reset(BackendDevice *d) {
        VfioDevice *v = (VfioDevice *) d;

        if (ioctl(v->fd, VFIO_DEVICE_RESET) < 0)
                return -errno;
        return 0;
}

static int vfio_device_get_fds(BackendDevice *d, BackendFd **ret, size_t *ret_n) {
        VfioDevice *v = (VfioDevice *) d;
        BackendFd *fds = calloc(1, sizeof(BackendFd));

        if (!fds)
                return -ENOMEM;
        /* Everything the client set up lives in the kernel behind this fd: its interrupt eventfds stay
         * wired and its BAR mmaps valid for as long as the fd is open somewhere. Device fds have no
         * poll(). */
        fds[0] = (BackendFd) { .name = "device", .fd = v->fd, .poll = false };
        *ret = fds;
        *ret_n = 1;
        return 0;
}

static const BackendDeviceOps vfio_device_ops = {
        .free = vfio_device_free,
        .get_info = vfio_device_get_info,
        .region_info = vfio_device_region_info,
        .region_read = vfio_device_region_read,
        .region_write = vfio_device_region_write,
        .irq_info = vfio_device_irq_info,
        .set_irqs = vfio_device_set_irqs,
        .reset = vfio_device_reset,
        .get_fds = vfio_device_get_fds,
};

int backend_vfio_device_get(BackendContainer *c, unsigned group, const char *device, BackendDevice **ret) {
        VfioDevice *v;
        int fd;

        fd = backend_container_open_device(c, group, device);
        if (fd < 0)
                return fd;

        v = calloc(1, sizeof(*v));
        if (!v) {
                safe_close(fd);
                return -ENOMEM;
        }
        v->base.ops = &vfio_device_ops;
        v->fd = fd;
        *ret = &v->base;
        return 0;
}

int backend_vfio_device_restore(BackendContainer *c, unsigned group, const char *device, BackendFd *fds,
                                size_t n_fds, BackendDevice **ret) {
        struct vfio_device_info info = { .argsz = sizeof(info) };
        VfioDevice *v;

        for (size_t i = 0; i < n_fds; i++) {
                if (strcmp(fds[i].name, "device") != 0 || fds[i].fd < 0)
                        continue;
                /* A VFIO device fd answers GET_INFO; anything else the store might hold does not. */
                if (ioctl(fds[i].fd, VFIO_DEVICE_GET_INFO, &info) < 0)
                        return log_debug_errno(-EBADF, "vfio: stored fd of device %s is no VFIO device.", device);
                v = calloc(1, sizeof(*v));
                if (!v)
                        return -ENOMEM;
                v->base.ops = &vfio_device_ops;
                v->fd = fds[i].fd;
                fds[i].fd = -EBADF;
                *ret = &v->base;
                return 0;
        }
        return log_debug_errno(-EBADF, "vfio: the fd of device %s was not kept.", device);
}
