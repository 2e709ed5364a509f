/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The vfio backend: the legacy VFIO container with the type1v2 IOMMU (include/uapi/linux/vfio.h).
 *
 * Groups are the IOMMU groups (/sys/kernel/iommu_groups/N) that have a /dev/vfio/N, i.e. at least one
 * device bound to a VFIO driver. A group fd is opened when the group is attached and closed when it is
 * detached, so free groups stay usable by anybody else the administrator allows.
 *
 * Longer than 600 lines: it is the whole type1 ioctl surface (groups, DMA, dirty pages, hot reset,
 * restore), and splitting it would spread one kernel object's rules over several files. */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/vfio.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend-device.h"
#include "backend.h"
#include "log.h"

#define VFIO_CONTAINER_PATH "/dev/vfio/vfio"
#define VFIO_DEV_DIR "/dev/vfio"
#define IOMMU_GROUPS_DIR "/sys/kernel/iommu_groups"

typedef struct VfioBackend {
        Backend base;
} VfioBackend;

typedef struct VfioGroupFd {
        unsigned id;
        int fd;
} VfioGroupFd;

typedef struct VfioContainer {
        BackendContainer base;
        int fd;
        bool iommu_set;
        VfioGroupFd *groups;
        size_t n_groups;
} VfioContainer;

static int string_compare(const void *a, const void *b) {
        return strcmp(*(char * const *) a, *(char * const *) b);
}

static int read_group_devices(unsigned id, char ***ret) {
        char path[128];
        _cleanup_strv_free_ char **l = NULL;
        size_t n = 0;
        DIR *d;
        struct dirent *de;

        snprintf(path, sizeof(path), IOMMU_GROUPS_DIR "/%u/devices", id);
        d = opendir(path);
        if (!d)
                return -errno;

        l = calloc(1, sizeof(char *));
        if (!l) {
                closedir(d);
                return -ENOMEM;
        }
        while ((de = readdir(d))) {
                char **a;

                if (de->d_name[0] == '.')
                        continue;
                a = realloc(l, (n + 2) * sizeof(char *));
                if (!a) {
                        closedir(d);
                        return -ENOMEM;
                }
                l = a;
                l[n] = strdup(de->d_name);
                l[n + 1] = NULL;
                if (!l[n]) {
                        closedir(d);
                        return -ENOMEM;
                }
                n++;
        }
        closedir(d);
        qsort(l, n, sizeof(char *), string_compare);
        *ret = TAKE_PTR(l);
        return 0;
}

/* Used only when the group is open elsewhere and VFIO_GROUP_GET_STATUS cannot be asked: the kernel's
 * rule is that every device is bound to a vfio driver or to no driver (vfio_dev_driver_allowed(),
 * which also accepts pci-stub/pcieport bridges; we stay conservative). */
static bool sysfs_group_viable(char **devices) {
        for (char **d = devices; d && *d; d++) {
                char path[256], target[256];
                ssize_t n;

                snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver", *d);
                n = readlink(path, target, sizeof(target) - 1);
                if (n < 0)
                        continue; /* no driver */
                target[n] = 0;
                const char *name = strrchr(target, '/');
                name = name ? name + 1 : target;
                if (strncmp(name, "vfio", 4) != 0 && strcmp(name, "pci-stub") != 0)
                        return false;
        }
        return true;
}

static int group_status_viable(int fd, bool *ret) {
        struct vfio_group_status status = { .argsz = sizeof(status) };

        if (ioctl(fd, VFIO_GROUP_GET_STATUS, &status) < 0)
                return -errno;
        *ret = status.flags & VFIO_GROUP_FLAGS_VIABLE;
        return 0;
}

static int vfio_get_group(Backend *b, unsigned id, BackendGroupInfo *ret) {
        char path[64];
        _cleanup_strv_free_ char **devices = NULL;
        _cleanup_close_ int fd = -EBADF;
        bool viable = false;
        int r;

        snprintf(path, sizeof(path), VFIO_DEV_DIR "/%u", id);
        if (access(path, F_OK) < 0)
                return -ENOENT;

        r = read_group_devices(id, &devices);
        if (r < 0)
                return r;

        /* A group's fd can be open only once; when we or someone else holds it, the kernel cannot be
         * asked through a second open (EBUSY), so fall back to what sysfs says. */
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0)
                r = group_status_viable(fd, &viable);
        if (fd < 0 || r < 0)
                viable = sysfs_group_viable(devices);

        ret->id = id;
        ret->viable = viable;
        ret->devices = TAKE_PTR(devices);
        return 0;
}

static int unsigned_compare(const void *a, const void *b) {
        unsigned x = *(const unsigned *) a, y = *(const unsigned *) b;
        return x < y ? -1 : x > y;
}

static int vfio_list_groups(Backend *b, BackendGroupInfo **ret, size_t *ret_n) {
        _cleanup_free_ unsigned *ids = NULL;
        BackendGroupInfo *infos;
        size_t n = 0, n_infos = 0;
        struct dirent *de;
        DIR *d;
        int r;

        d = opendir(VFIO_DEV_DIR);
        if (!d) {
                if (errno != ENOENT)
                        return -errno;
        } else {
                while ((de = readdir(d))) {
                        char *end;
                        unsigned long id;
                        unsigned *a;

                        if (de->d_name[0] < '0' || de->d_name[0] > '9')
                                continue; /* "vfio", the container device */
                        id = strtoul(de->d_name, &end, 10);
                        if (*end != 0 || id > UINT32_MAX)
                                continue;
                        a = realloc(ids, (n + 1) * sizeof(unsigned));
                        if (!a) {
                                closedir(d);
                                return -ENOMEM;
                        }
                        ids = a;
                        ids[n++] = (unsigned) id;
                }
                closedir(d);
        }
        qsort(ids, n, sizeof(unsigned), unsigned_compare);

        infos = calloc(n ? n : 1, sizeof(BackendGroupInfo));
        if (!infos)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = vfio_get_group(b, ids[i], &infos[n_infos]);
                if (r == -ENOENT)
                        continue; /* vanished meanwhile */
                if (r < 0) {
                        backend_group_info_free_many(infos, n_infos);
                        return r;
                }
                n_infos++;
        }
        *ret = infos;
        *ret_n = n_infos;
        return 0;
}

static int vfio_new_container(Backend *b, BackendContainer **ret) {
        _cleanup_close_ int fd = -EBADF;
        VfioContainer *c;
        int r;

        fd = open(VFIO_CONTAINER_PATH, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return log_debug_errno(-errno, "Cannot open " VFIO_CONTAINER_PATH ": %m");
        r = ioctl(fd, VFIO_GET_API_VERSION);
        if (r != VFIO_API_VERSION)
                return log_debug_errno(-EPROTO, "Unsupported VFIO API version %d.", r);
        if (ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
                return log_debug_errno(-EOPNOTSUPP, "The kernel's VFIO has no type1v2 IOMMU (vfio_iommu_type1).");

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->base.backend = b;
        c->fd = TAKE_FD(fd);
        *ret = &c->base;
        return 0;
}

static ssize_t vfio_container_group_index(VfioContainer *c, unsigned id) {
        for (size_t i = 0; i < c->n_groups; i++)
                if (c->groups[i].id == id)
                        return (ssize_t) i;
        return -1;
}

static void vfio_container_unmap_all(VfioContainer *c) {
        struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .flags = VFIO_DMA_UNMAP_FLAG_ALL };

        if (!c->iommu_set)
                return;
        if (ioctl(c->fd, VFIO_CHECK_EXTENSION, VFIO_UNMAP_ALL) > 0) {
                if (ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
                        log_warning("VFIO_IOMMU_UNMAP_DMA(ALL) failed: %m");
                return;
        }
        /* Older kernels: [0, 2^63) and [2^63, 2^64-1] cover every mapping whole. */
        unmap = (struct vfio_iommu_type1_dma_unmap) { .argsz = sizeof(unmap), .iova = 0, .size = UINT64_C(1) << 63 };
        (void) ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap);
        unmap = (struct vfio_iommu_type1_dma_unmap) { .argsz = sizeof(unmap), .iova = UINT64_C(1) << 63,
                                                      .size = (UINT64_C(1) << 63) - 4096 };
        (void) ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap);
}

static void vfio_free_container(BackendContainer *bc) {
        VfioContainer *c = (VfioContainer *) bc;

        /* Unpin now, even if a VMM still holds a device fd that keeps the group (and so the
         * container) alive in the kernel after we close our fds. */
        vfio_container_unmap_all(c);

        for (size_t i = 0; i < c->n_groups; i++) {
                /* EBUSY while device fds are open: closing the group fd then leaves the group bound
                 * to the container until the VMM closes them. Nothing is mapped any more. */
                (void) ioctl(c->groups[i].fd, VFIO_GROUP_UNSET_CONTAINER);
                safe_close(c->groups[i].fd);
        }
        free(c->groups);
        safe_close(c->fd);
        free(c);
}

static int vfio_attach_group(BackendContainer *bc, unsigned id) {
        VfioContainer *c = (VfioContainer *) bc;
        _cleanup_close_ int fd = -EBADF;
        char path[64];
        bool viable = false;
        VfioGroupFd *a;
        int r;

        /* A group fd opens once: a second open of our own group is EBUSY in the kernel too. */
        if (vfio_container_group_index(c, id) >= 0)
                return -EBUSY;

        a = realloc(c->groups, (c->n_groups + 1) * sizeof(VfioGroupFd));
        if (!a)
                return -ENOMEM;
        c->groups = a;

        snprintf(path, sizeof(path), VFIO_DEV_DIR "/%u", id);
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                /* EBUSY: another VMM, or a closed container whose device fds are still open. */
                return log_debug_errno(-errno, "Cannot open %s: %m", path);

        r = group_status_viable(fd, &viable);
        if (r < 0)
                return log_debug_errno(r, "VFIO_GROUP_GET_STATUS on group %u failed: %m", id);
        if (!viable)
                return -EPERM; /* what VFIO_GROUP_SET_CONTAINER would say */

        if (ioctl(fd, VFIO_GROUP_SET_CONTAINER, &c->fd) < 0)
                return log_debug_errno(-errno, "VFIO_GROUP_SET_CONTAINER for group %u failed: %m", id);

        if (!c->iommu_set) {
                if (ioctl(c->fd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
                        /* EPERM: the IOMMU cannot isolate the group's interrupts (no interrupt remapping,
                         * vfio_iommu_type1.allow_unsafe_interrupts unset). */
                        r = log_debug_errno(-errno, "VFIO_SET_IOMMU(TYPE1v2) for group %u failed: %m", id);
                        (void) ioctl(fd, VFIO_GROUP_UNSET_CONTAINER);
                        return r;
                }
                c->iommu_set = true;
        }

        c->groups[c->n_groups++] = (VfioGroupFd) { .id = id, .fd = TAKE_FD(fd) };
        return 0;
}

static int vfio_detach_group(BackendContainer *bc, unsigned id) {
        VfioContainer *c = (VfioContainer *) bc;
        ssize_t i = vfio_container_group_index(c, id);

        if (i < 0)
                return -EINVAL; /* as VFIO_GROUP_UNSET_CONTAINER for a group in no container */
        if (ioctl(c->groups[i].fd, VFIO_GROUP_UNSET_CONTAINER) < 0)
                return -errno; /* EBUSY: device fds are open */
        safe_close(c->groups[i].fd);
        memmove(c->groups + i, c->groups + i + 1, (c->n_groups - i - 1) * sizeof(VfioGroupFd));
        c->n_groups--;
        /* The kernel released the IOMMU with the last group; the next attach sets it again. */
        if (c->n_groups == 0)
                c->iommu_set = false;
        return 0;
}

static int vfio_get_iommu_info(BackendContainer *bc, BackendIommuInfo *ret) {
        VfioContainer *c = (VfioContainer *) bc;
        _cleanup_free_ struct vfio_iommu_type1_info *info = NULL;
        size_t argsz = sizeof(*info);
        BackendIommuInfo out = { .dma_available = UINT32_MAX };

        /* Grow argsz until the capability chain fits, as the kernel asks. */
        for (;;) {
                struct vfio_iommu_type1_info *n = realloc(info, argsz);
                if (!n)
                        return -ENOMEM;
                info = n;
                memset(info, 0, argsz);
                info->argsz = (uint32_t) argsz;
                if (ioctl(c->fd, VFIO_IOMMU_GET_INFO, info) < 0)
                        return -errno;
                if (info->argsz <= argsz)
                        break;
                if (info->argsz > 1024 * 1024)
                        return log_debug_errno(-E2BIG, "VFIO_IOMMU_GET_INFO wants %u bytes.", info->argsz);
                argsz = info->argsz;
        }

        out.page_sizes = info->flags & VFIO_IOMMU_INFO_PGSIZES ? info->iova_pgsizes : 0;

        if (info->flags & VFIO_IOMMU_INFO_CAPS) {
                uint32_t off = info->cap_offset;
                unsigned hops = 0;

                /* Every offset is checked against argsz: never follow the chain blindly. The kernel
                 * packs capabilities at 4-byte offsets, so read them with memcpy(), not through
                 * pointers to the 8-byte-aligned uapi structs. */
                while (off != 0 && hops++ < 64) {
                        struct vfio_info_cap_header h;
                        const char *p = (const char *) info + off;

                        if (off < sizeof(*info) || off > argsz - sizeof(h))
                                break;
                        memcpy(&h, p, sizeof(h));
                        if (h.id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE &&
                            off + sizeof(struct vfio_iommu_type1_info_cap_iova_range) <= argsz) {
                                const size_t base = offsetof(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges);
                                size_t max = (argsz - off - base) / sizeof(struct vfio_iova_range), n;
                                uint32_t nr;

                                memcpy(&nr, p + offsetof(struct vfio_iommu_type1_info_cap_iova_range, nr_iovas),
                                       sizeof(nr));
                                n = nr < max ? nr : max;
                                free(out.ranges);
                                out.ranges = calloc(n ? n : 1, sizeof(IovaRange));
                                if (!out.ranges)
                                        return -ENOMEM;
                                for (size_t i = 0; i < n; i++) {
                                        struct vfio_iova_range range;
                                        memcpy(&range, p + base + i * sizeof(range), sizeof(range));
                                        out.ranges[i] = (IovaRange) { range.start, range.end };
                                }
                                out.n_ranges = n;
                        } else if (h.id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL &&
                                   off + sizeof(struct vfio_iommu_type1_info_dma_avail) <= argsz) {
                                memcpy(&out.dma_available,
                                       p + offsetof(struct vfio_iommu_type1_info_dma_avail, avail),
                                       sizeof(out.dma_available));
                        }
                        if (h.next != 0 && h.next <= off)
                                break; /* chains only go forward */
                        off = h.next;
                }
        }

        /* Kernels without the IOVA capability: the whole space, as they accept it. */
        if (!out.ranges) {
                out.ranges = calloc(1, sizeof(IovaRange));
                if (!out.ranges)
                        return -ENOMEM;
                out.ranges[0] = (IovaRange) { 0, UINT64_MAX };
                out.n_ranges = 1;
        }

        *ret = out;
        return 0;
}

static int vfio_map_dma(BackendContainer *bc, uint64_t vaddr, uint64_t iova, uint64_t size, uint32_t flags) {
        VfioContainer *c = (VfioContainer *) bc;
        struct vfio_iommu_type1_dma_map map = {
                .argsz = sizeof(map),
                .flags = flags & (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE),
                .vaddr = vaddr,
                .iova = iova,
                .size = size,
        };

        /* The daemon's view of guest RAM is its own fresh MAP_SHARED mapping of the VMM's memfd, with
         * no page tables yet: the pin (vfio_pin_pages_remote()) would fault in every page one at a
         * time, 5x the direct ioctl for a 256 MiB memfd the VMM has touched (bench/vm-map).
         * Populating the range first fills the page tables in bulk (with huge pages where the memfd
         * has them). MADV_POPULATE_READ even for a writable mapping: read faults on a file map
         * whole fault-around blocks (16 pages) at once, and a shared tmpfs/hugetlbfs mapping has no
         * write notification, so the PTEs come out writable and the pin's FOLL_WRITE takes them as
         * they are; MADV_POPULATE_WRITE faults page by page and saved almost nothing (bench/vm-map:
         * fresh view 263 ms, POPULATE_WRITE 231 ms, POPULATE_READ 104 ms; pre-touched direct 53 ms).
         * Only a hint: Linux < 5.14 has no MADV_POPULATE_* (EINVAL), and whatever the populate
         * cannot fault in, the pin faults in or reports itself. */
        (void) madvise((void *) (uintptr_t) vaddr, size, MADV_POPULATE_READ);

        if (ioctl(c->fd, VFIO_IOMMU_MAP_DMA, &map) < 0)
                return -errno;
        return 0;
}

static int vfio_unmap_dma(BackendContainer *bc, uint64_t iova, uint64_t size, uint64_t *ret_unmapped) {
        VfioContainer *c = (VfioContainer *) bc;
        struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = iova, .size = size };

        if (ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
                return -errno;
        if (ret_unmapped)
                *ret_unmapped = unmap.size;
        return 0;
}

/* A new device fd from the group's fd; -EINVAL, as the kernel for a group in no container, when the
 * group is not in this one. */
static int vfio_open_device_fd(VfioContainer *c, unsigned group, const char *device) {
        ssize_t i = vfio_container_group_index(c, group);
        int fd;

        if (i < 0)
                return -EINVAL;
        fd = ioctl(c->groups[i].fd, VFIO_GROUP_GET_DEVICE_FD, device);
        if (fd < 0)
                return log_debug_errno(-errno, "VFIO_GROUP_GET_DEVICE_FD(%s) on group %u failed: %m", device, group);
        /* Never leak a device fd into a child of the daemon. */
        (void) fcntl(fd, F_SETFD, FD_CLOEXEC);
        return fd;
}

static int vfio_get_device_fd(BackendContainer *bc, unsigned group, const char *device) {
        return vfio_open_device_fd((VfioContainer *) bc, group, device);
}

static int vfio_get_fds(BackendContainer *bc, BackendFd **ret, size_t *ret_n) {
        VfioContainer *c = (VfioContainer *) bc;
        BackendFd *fds = calloc(c->n_groups + 1, sizeof(BackendFd));

        if (!fds)
                return -ENOMEM;
        fds[0] = (BackendFd) { .name = "container", .fd = c->fd, .poll = false };
        for (size_t i = 0; i < c->n_groups; i++) {
                /* VFIO group fds have no poll(): tell the fd store not to watch them. */
                fds[i + 1] = (BackendFd) { .fd = c->groups[i].fd, .poll = false };
                snprintf(fds[i + 1].name, sizeof(fds[i + 1].name), "group-%u", c->groups[i].id);
        }
        *ret = fds;
        *ret_n = c->n_groups + 1;
        return 0;
}

static int vfio_restore_container(Backend *b, BackendFd *fds, size_t n_fds, const unsigned *groups, size_t n_groups,
                                  BackendContainer **ret, BrokerError *e) {
        VfioContainer *c;
        ssize_t container = -1;

        for (size_t i = 0; i < n_fds; i++)
                if (strcmp(fds[i].name, "container") == 0)
                        container = (ssize_t) i;
        if (container < 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "The container's fd was not kept.");
        /* Repointing the kernel at the new daemon's addresses needs VFIO_UPDATE_VADDR (Linux 5.12). */
        if (ioctl(fds[container].fd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) <= 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "The kernel cannot update DMA addresses (no VFIO_UPDATE_VADDR).");

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->groups = calloc(n_groups ? n_groups : 1, sizeof(VfioGroupFd));
        if (!c->groups) {
                free(c);
                return -ENOMEM;
        }
        c->base.backend = b;
        c->fd = fds[container].fd;
        fds[container].fd = -EBADF;
        c->iommu_set = n_groups > 0;

        for (size_t g = 0; g < n_groups; g++) {
                char name[48];
                ssize_t found = -1;

                snprintf(name, sizeof(name), "group-%u", groups[g]);
                for (size_t i = 0; i < n_fds; i++)
                        if (fds[i].fd >= 0 && strcmp(fds[i].name, name) == 0)
                                found = (ssize_t) i;
                if (found < 0) {
                        vfio_free_container(&c->base);
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "The fd of group %u was not kept.",
                                                groups[g]);
                }
                c->groups[c->n_groups++] = (VfioGroupFd) { .id = groups[g], .fd = fds[found].fd };
                fds[found].fd = -EBADF;
        }
        *ret = &c->base;
        return 0;
}

static int vfio_invalidate_dma_vaddr(BackendContainer *bc, uint64_t iova, uint64_t size) {
        VfioContainer *c = (VfioContainer *) bc;
        struct vfio_iommu_type1_dma_unmap unmap = {
                .argsz = sizeof(unmap), .flags = VFIO_DMA_UNMAP_FLAG_VADDR, .iova = iova, .size = size,
        };

        return ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0 ? -errno : 0;
}

static int vfio_update_dma_vaddr(BackendContainer *bc, uint64_t vaddr, uint64_t iova, uint64_t size,
                                 uint32_t flags) {
        VfioContainer *c = (VfioContainer *) bc;
        struct vfio_iommu_type1_dma_map map = {
                .argsz = sizeof(map), .flags = VFIO_DMA_MAP_FLAG_VADDR, .vaddr = vaddr, .iova = iova, .size = size,
        };

        if (ioctl(c->fd, VFIO_IOMMU_MAP_DMA, &map) == 0)
                return 0;
        /* After a crash the old addresses were never invalidated: do it now, then repoint. The
         * mapping and its pins stay throughout; only the kernel's idea of the daemon's address moves. */
        if (errno == EINVAL && vfio_invalidate_dma_vaddr(bc, iova, size) == 0 &&
            ioctl(c->fd, VFIO_IOMMU_MAP_DMA, &map) == 0)
                return 0;
        return -errno;
}

static void vfio_abandon_container(BackendContainer *bc) {
        VfioContainer *c = (VfioContainer *) bc;

        for (size_t i = 0; i < c->n_groups; i++)
                safe_close(c->groups[i].fd);
        free(c->groups);
        safe_close(c->fd);
        free(c);
}

static int vfio_get_hot_reset_groups(BackendContainer *bc, unsigned group, const char *device, unsigned **ret,
                                     size_t *ret_n) {
        VfioContainer *c = (VfioContainer *) bc;
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ struct vfio_pci_hot_reset_info *info = NULL;
        _cleanup_free_ unsigned *groups = NULL;
        size_t n = 0, count = 8;
        int r;

        /* A device fd of our own for the ioctl, closed when done. The VMM's fds stay as they are (a
         * second open of an open device does not reset or re-enable it). */
        fd = vfio_open_device_fd(c, group, device);
        if (fd < 0)
                return fd;

        /* The kernel says how many devices the reset touches when the buffer is too small (ENOSPC). */
        for (;;) {
                free(info);
                info = calloc(1, sizeof(*info) + count * sizeof(struct vfio_pci_dependent_device));
                if (!info)
                        return -ENOMEM;
                info->argsz = sizeof(*info) + count * sizeof(struct vfio_pci_dependent_device);
                if (ioctl(fd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, info) >= 0)
                        break;
                r = -errno;
                if (r == -ENOSPC && info->count > count) {
                        count = info->count;
                        continue;
                }
                /* ENODEV, ENOTTY: neither a resettable slot nor a resettable bus. */
                return log_debug_errno(r, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on %s failed: %m", device);
        }

        groups = calloc(info->count + 1, sizeof(unsigned));
        if (!groups)
                return -ENOMEM;
        for (size_t i = 0; i < info->count; i++) {
                unsigned id = info->devices[i].group_id;
                bool seen = false;
                for (size_t j = 0; j < n && !seen; j++)
                        seen = groups[j] == id;
                if (!seen)
                        groups[n++] = id;
        }
        qsort(groups, n, sizeof(unsigned), unsigned_compare);
        *ret = TAKE_PTR(groups);
        *ret_n = n;
        return 0;
}

static int vfio_pci_hot_reset(BackendContainer *bc, unsigned group, const char *device,
                              BackendContainer *const *owners, const unsigned *groups, size_t n) {
        VfioContainer *c = (VfioContainer *) bc;
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ struct vfio_pci_hot_reset *reset = NULL;

        reset = calloc(1, sizeof(*reset) + n * sizeof(int32_t));
        if (!reset)
                return -ENOMEM;
        reset->argsz = sizeof(*reset) + n * sizeof(int32_t);
        reset->count = n;
        for (size_t i = 0; i < n; i++) {
                VfioContainer *o = (VfioContainer *) owners[i];
                ssize_t k = vfio_container_group_index(o, groups[i]);
                if (k < 0)
                        /* As the kernel for a group fd that is not in a container. */
                        return log_debug_errno(-EINVAL, "VFIO group %u is not attached.", groups[i]);
                reset->group_fds[i] = o->groups[k].fd;
        }

        fd = vfio_open_device_fd(c, group, device);
        if (fd < 0)
                return fd;
        if (ioctl(fd, VFIO_DEVICE_PCI_HOT_RESET, reset) < 0)
                return log_debug_errno(-errno, "VFIO_DEVICE_PCI_HOT_RESET on %s failed: %m", device);
        return 0;
}

static int vfio_set_dirty_tracking(BackendContainer *bc, bool start) {
        VfioContainer *c = (VfioContainer *) bc;
        struct vfio_iommu_type1_dirty_bitmap d = {
                .argsz = sizeof(d),
                .flags = start ? VFIO_IOMMU_DIRTY_PAGES_FLAG_START : VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
        };

        if (ioctl(c->fd, VFIO_IOMMU_DIRTY_PAGES, &d) < 0)
                return -errno;
        return 0;
}

static uint64_t bitmap_bytes(uint64_t size, uint64_t page_size) {
        uint64_t pages = size / page_size;
        return (pages + 63) / 64 * 8;
}

static int vfio_get_dirty_bitmap(BackendContainer *bc, uint64_t iova, uint64_t size, uint64_t page_size,
                                 uint64_t *bitmap) {
        VfioContainer *c = (VfioContainer *) bc;
        struct {
                struct vfio_iommu_type1_dirty_bitmap d;
                struct vfio_iommu_type1_dirty_bitmap_get get;
        } req = {
                .d = { .argsz = sizeof(req), .flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP },
                .get = {
                        .iova = iova,
                        .size = size,
                        .bitmap = { .pgsize = page_size, .size = bitmap_bytes(size, page_size),
                                    .data = (__u64 *) bitmap },
                },
        };

        if (ioctl(c->fd, VFIO_IOMMU_DIRTY_PAGES, &req) < 0)
                return -errno;
        return 0;
}

static int vfio_unmap_dma_dirty(BackendContainer *bc, uint64_t iova, uint64_t size, uint64_t page_size,
                                uint64_t *bitmap, uint64_t *ret_unmapped) {
        VfioContainer *c = (VfioContainer *) bc;
        struct {
                struct vfio_iommu_type1_dma_unmap unmap;
                struct vfio_bitmap bitmap;
        } req = {
                .unmap = { .argsz = sizeof(req), .flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                           .iova = iova, .size = size },
                .bitmap = { .pgsize = page_size, .size = bitmap_bytes(size, page_size), .data = (__u64 *) bitmap },
        };

        if (ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &req) < 0)
                return -errno;
        if (ret_unmapped)
                *ret_unmapped = req.unmap.size;
        return 0;
}

static void vfio_free(Backend *b) {
        free(b);
}

static const BackendOps vfio_ops = {
        .name = "vfio-type1",
        .free = vfio_free,
        .list_groups = vfio_list_groups,
        .get_group = vfio_get_group,
        .new_container = vfio_new_container,
        .free_container = vfio_free_container,
        .attach_group = vfio_attach_group,
        .detach_group = vfio_detach_group,
        .get_iommu_info = vfio_get_iommu_info,
        .map_dma = vfio_map_dma,
        .unmap_dma = vfio_unmap_dma,
        .get_device_fd = vfio_get_device_fd,
        .get_hot_reset_groups = vfio_get_hot_reset_groups,
        .pci_hot_reset = vfio_pci_hot_reset,
        .set_dirty_tracking = vfio_set_dirty_tracking,
        .get_dirty_bitmap = vfio_get_dirty_bitmap,
        .unmap_dma_dirty = vfio_unmap_dma_dirty,
        .get_fds = vfio_get_fds,
        .restore_container = vfio_restore_container,
        .update_dma_vaddr = vfio_update_dma_vaddr,
        .invalidate_dma_vaddr = vfio_invalidate_dma_vaddr,
        .abandon_container = vfio_abandon_container,
        .get_device = backend_vfio_device_get,
        .restore_device = backend_vfio_device_restore,
};

int backend_vfio_new(const BrokerConfig *config, Backend **ret, BrokerError *e) {
        _cleanup_close_ int fd = -EBADF;
        VfioBackend *b;

        fd = open(VFIO_CONTAINER_PATH, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOENT)
                        return broker_error_set_errno(e, -ENOENT, "No " VFIO_CONTAINER_PATH ": load the vfio and "
                                                      "vfio_iommu_type1 modules");
                return broker_error_set_errno(e, -errno, "Cannot open " VFIO_CONTAINER_PATH);
        }
        if (ioctl(fd, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
                return broker_error_set_errno(e, -EPROTO, "Unsupported VFIO API version");
        if (ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
                return broker_error_set_errno(e, -EOPNOTSUPP, "No type1v2 IOMMU: load vfio_iommu_type1");

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->base.ops = &vfio_ops;
        *ret = &b->base;
        return 0;
}
