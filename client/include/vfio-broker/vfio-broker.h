/* SPDX-License-Identifier: LGPL-2.1-or-later */
#ifndef VFIO_BROKER_H
#define VFIO_BROKER_H

/* libvfio-broker: the client side of vfio-brokerd (org.vfiobroker.Broker1 on the system bus).
 *
 * A VMM creates a container, attaches VFIO groups, maps its guest RAM (memfd, tmpfs or hugetlbfs
 * fds) and opens device fds, without root and without touching /dev/vfio. Everything the VMM holds
 * is released by the daemon when the VMM's bus connection goes away.
 *
 * Conventions:
 *  - Functions return 0 (or a non-negative value such as an fd) on success and a negative errno on
 *    failure. Each broker error has one errno: NoSuchGroup -ENOENT, NoSuchDevice -ENODEV,
 *    NotViable -EPERM, Busy -EBUSY, NoGroups -ENXIO, Overlap -EEXIST, WouldSplit -EXDEV,
 *    OutOfRange -ERANGE, Unaligned -EFAULT, NotMapped -ESRCH, BadMemory -EBADF, QuotaExceeded -EDQUOT,
 *    Kernel -EIO, InvalidArgs -EINVAL, AccessDenied -EACCES, NotSupported -EOPNOTSUPP,
 *    LimitsExceeded -E2BIG.
 *  - After a failure, vfio_broker_error_name() and vfio_broker_error_message() return the D-Bus error
 *    name and the broker's message (meant for people: log it) until the next call on that handle.
 *  - Calls block until the broker answers. Signals (balloon changes) are delivered when the
 *    connection is processed: attach it to an sd-event loop (vfio_broker_attach_event()), to a GLib
 *    main context (vfio-broker-glib.h), or drive it by hand (vfio_broker_get_fd(),
 *    vfio_broker_get_events(), vfio_broker_get_timeout(), vfio_broker_process()).
 *  - Calls go over a private peer-to-peer connection to the broker (Manager.OpenConnection) when it
 *    offers one, which saves the bus daemon's round trip; VFIO_BROKER_PEER=0 in the environment keeps
 *    them on the bus. Signals always come on the bus, so a callback may run after the reply of the
 *    call that caused it. If the broker restarts, calls fall back to the bus and reopen the peer.
 *  - A handle is not thread-safe; use one per thread, or lock around it.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sd_bus sd_bus;
typedef struct sd_event sd_event;

typedef struct vfio_broker vfio_broker;
typedef struct vfio_broker_container vfio_broker_container;

/* Map flags (VFIO_DMA_MAP_FLAG_READ/WRITE): the device may read / write the memory. */
#define VFIO_BROKER_MAP_READ  1u
#define VFIO_BROKER_MAP_WRITE 2u

/* --- connections ------------------------------------------------------------------------------ */

/* Connects to the system bus ($DBUS_SYSTEM_BUS_ADDRESS is honoured). */
int vfio_broker_open(vfio_broker **ret);
/* Uses a bus connection the VMM already has (a reference is taken). Containers belong to that
 * connection: they close when it does. */
int vfio_broker_open_with_bus(sd_bus *bus, vfio_broker **ret);
vfio_broker *vfio_broker_ref(vfio_broker *b);
/* Drops a reference. The last one closes the connection if vfio_broker_open() opened it, and with
 * it every container it created; a bus given to vfio_broker_open_with_bus() is only unreferenced. */
vfio_broker *vfio_broker_unref(vfio_broker *b);

const char *vfio_broker_error_name(const vfio_broker *b);
const char *vfio_broker_error_message(const vfio_broker *b);

/* The event-loop hooks. */
int vfio_broker_attach_event(vfio_broker *b, sd_event *event, int priority);
int vfio_broker_get_fd(vfio_broker *b);
int vfio_broker_get_events(vfio_broker *b);              /* poll() events to wait for */
int vfio_broker_get_timeout(vfio_broker *b, uint64_t *usec); /* CLOCK_MONOTONIC, UINT64_MAX: none */
int vfio_broker_process(vfio_broker *b);                 /* > 0: call again */
sd_bus *vfio_broker_get_bus(vfio_broker *b);

/* --- the manager ---------------------------------------------------------------------------------- */

typedef struct vfio_broker_status {
        char *version;
        char *backend;          /* "vfio-type1" or "sim" */
        bool balloon_inhibited;
        uint32_t balloon_inhibitors;
} vfio_broker_status;

int vfio_broker_get_status(vfio_broker *b, vfio_broker_status *ret);
void vfio_broker_status_clear(vfio_broker_status *s);

/* Called with the Manager's balloon state whenever it changes (and not before the first change). */
typedef void (*vfio_broker_balloon_handler)(vfio_broker *b, bool inhibited, uint32_t inhibitors, void *userdata);
int vfio_broker_watch_balloon(vfio_broker *b, vfio_broker_balloon_handler handler, void *userdata);

typedef struct vfio_broker_group {
        uint32_t id;
        char **devices;         /* NULL-terminated */
        bool viable;
        char *container;        /* object path, or NULL when free */
} vfio_broker_group;

int vfio_broker_list_groups(vfio_broker *b, vfio_broker_group **ret, size_t *ret_n);
void vfio_broker_groups_free(vfio_broker_group *groups, size_t n);

typedef struct vfio_broker_iova_range {
        uint64_t first, last;   /* inclusive */
} vfio_broker_iova_range;

typedef struct vfio_broker_discardable_range {
        uint64_t first, last;   /* inclusive */
        uint64_t granule;
} vfio_broker_discardable_range;

typedef struct vfio_broker_container_info {
        char *path;
        char *owner;            /* unique bus name */
        uint32_t uid;
        char *label;
        uint32_t *groups;
        size_t n_groups;
        uint32_t mappings;
        uint64_t mapped_bytes;
        bool balloon_inhibited;
        vfio_broker_iova_range *iova_ranges;
        size_t n_iova_ranges;
        uint64_t page_sizes;
        uint32_t dma_available;         /* mappings the kernel still accepts */
        bool dirty_tracking;
        vfio_broker_discardable_range *discardable;
        size_t n_discardable;
        char **vfio_user_devices;       /* NULL-terminated: devices served over vfio-user */
} vfio_broker_container_info;

/* Every container on the host (everyone may read them). */
int vfio_broker_list_containers(vfio_broker *b, vfio_broker_container_info **ret, size_t *ret_n);
/* One container by object path or by id ("3"). */
int vfio_broker_get_container_info(vfio_broker *b, const char *path_or_id, vfio_broker_container_info *ret);
void vfio_broker_container_info_clear(vfio_broker_container_info *info);
void vfio_broker_container_infos_free(vfio_broker_container_info *infos, size_t n);

/* Closes any container (administrators: root, or the polkit action org.vfiobroker.broker1.manage). */
int vfio_broker_close_container(vfio_broker *b, const char *path_or_id);

/* --- containers --------------------------------------------------------------------------------- */

/* A new container owned by this connection. label may be NULL. */
int vfio_broker_container_new(vfio_broker *b, const char *label, vfio_broker_container **ret);
const char *vfio_broker_container_get_path(const vfio_broker_container *c);

int vfio_broker_container_attach_group(vfio_broker_container *c, uint32_t group);
int vfio_broker_container_detach_group(vfio_broker_container *c, uint32_t group);
/* Returns a new device fd (O_CLOEXEC), owned by the caller. */
int vfio_broker_container_open_device(vfio_broker_container *c, const char *device);
int vfio_broker_container_map(vfio_broker_container *c, int memory_fd, uint64_t offset, uint64_t size,
                              uint64_t iova, uint32_t flags);
int vfio_broker_container_unmap(vfio_broker_container *c, uint64_t iova, uint64_t size);

typedef struct vfio_broker_unmap {
        uint64_t iova, size;
} vfio_broker_unmap;

typedef struct vfio_broker_map {
        uint32_t memory;        /* index into the memory fds passed alongside */
        uint64_t offset, size, iova;
        uint32_t flags;
} vfio_broker_map;

/* Update(): the unmaps, then the maps, in one call and all or nothing (a failure leaves the
 * container exactly as it was; the message names the failing entry). Each memory fd is passed once.
 * Any number of fds may be given: no D-Bus message passes more than 253 (the kernel's SCM_MAX_FD,
 * the peer connection's and dbus-broker's limit), and dbus-daemon only 16 unless configured to
 * allow more (it disconnects a sender that sends more, and the broker then closes its containers),
 * so the library sends larger updates in several messages, at most 16 fds each on the bus. A split
 * update stays all or nothing: the maps that intersect the unmaps go in the last message, with the
 * unmaps, and the maps of earlier messages are undone when a later one fails. -E2BIG (error name
 * org.freedesktop.DBus.Error.LimitsExceeded) when those maps need more fds than one message passes. */
int vfio_broker_container_update(vfio_broker_container *c, const vfio_broker_unmap *unmaps, size_t n_unmaps,
                                 const int *memory_fds, size_t n_fds, const vfio_broker_map *maps, size_t n_maps);
int vfio_broker_container_get_info(vfio_broker_container *c, vfio_broker_container_info *ret);

/* --- vfio-user: a brokered device for unmodified VMMs -------------------------------------------------- */

/* Serves device (of an attached group) over the vfio-user protocol on listener_fd: a listening AF_UNIX
 * SOCK_STREAM socket the caller bound at a path of its choosing (the broker switches it to non-blocking
 * and never creates files). A VMM that speaks vfio-user (QEMU >= 10.1: -device
 * vfio-user-pci,socket={"type":"unix","path":PATH}) then connects there, unprivileged, and its DMA_MAPs
 * with fds become mappings of this container, exactly as vfio_broker_container_map(). One client at a
 * time, of the container's uid or root; when it leaves, its mappings go and the device stays served.
 * -ENODEV: the device's group is not attached; -EBUSY: already served; -EBADF: not a listening unix
 * stream socket. */
int vfio_broker_container_serve_vfio_user(vfio_broker_container *c, const char *device, int listener_fd);
/* Stops serving: the client is disconnected and its mappings dropped. -ENODEV: not served. */
int vfio_broker_container_stop_vfio_user(vfio_broker_container *c, const char *device);

/* --- what only the holder of the group and container fds can do ------------------------------------ */

/* PCI hot reset (VFIO_DEVICE_PCI_HOT_RESET) of a device of an attached group. Every group the reset
 * touches must be attached to a container of this connection; otherwise -EBUSY, and
 * vfio_broker_error_message() names the groups that block it. -EOPNOTSUPP: the device has no slot or
 * bus reset. */
int vfio_broker_container_hot_reset(vfio_broker_container *c, const char *device);

/* Dirty page tracking for migration (type1's VFIO_IOMMU_DIRTY_PAGES). A bitmap has one bit per page of
 * page_size (the smallest IOMMU page size, the lowest bit of PageSizes), bit 0 of the first 64-bit
 * word being the page at iova; the broker writes it into bitmap_fd (a memfd or file the caller can
 * read, opened read-write) at bitmap_offset (8-byte aligned), so large bitmaps never cross D-Bus.
 * The range must cut no mapping. *ret_dirty_pages (may be NULL) gets the number of bits set. Note
 * that type1 reports every mapped page dirty for devices that do not track their own writes, which
 * is every vfio-pci device. */
int vfio_broker_container_start_dirty_tracking(vfio_broker_container *c);
int vfio_broker_container_stop_dirty_tracking(vfio_broker_container *c);
int vfio_broker_container_get_dirty_bitmap(vfio_broker_container *c, uint64_t iova, uint64_t size, uint64_t page_size,
                                           int bitmap_fd, uint64_t bitmap_offset, uint64_t *ret_dirty_pages);
/* Unmap, and the dirty pages of what was unmapped (a vIOMMU unmapping during migration). */
int vfio_broker_container_unmap_dirty(vfio_broker_container *c, uint64_t iova, uint64_t size, uint64_t page_size,
                                      int bitmap_fd, uint64_t bitmap_offset, uint64_t *ret_dirty_pages);
/* Bytes of bitmap a range needs. */
static inline uint64_t vfio_broker_dirty_bitmap_size(uint64_t size, uint64_t page_size) {
        return (size / page_size + 63) / 64 * 8;
}

/* Coordinated discard (virtio-mem, balloons): a discardable region is mapped in granules (a power of
 * two, at least the smallest IOMMU page), populated or not. Call discard() before freeing memory in
 * the range (MADV_DONTNEED, FALLOC_FL_PUNCH_HOLE) and populate() before the guest uses it again; both
 * take granule-aligned ranges inside one region and are all or nothing. Each populated granule is
 * one kernel mapping (see dma_available). unmap() of a range covering whole regions removes them.
 * Regions are published in the container's DiscardableRanges. */
int vfio_broker_container_map_discardable(vfio_broker_container *c, int memory_fd, uint64_t offset, uint64_t size,
                                          uint64_t iova, uint32_t flags, uint64_t granule, bool populated);
int vfio_broker_container_discard(vfio_broker_container *c, uint64_t iova, uint64_t size);
int vfio_broker_container_populate(vfio_broker_container *c, uint64_t iova, uint64_t size);

/* KVM-VFIO registration (KVM_DEV_VFIO_FILE_ADD/DEL on the VMM's KVM_DEV_TYPE_VFIO device) tells KVM
 * about non-coherent DMA and hands it to drivers that need the VM. The kernel runs KVM device ioctls
 * only in the process that created the VM (kvm_device_ioctl() returns EIO to any other), so the broker
 * cannot do it with the group fds it holds; the VMM does it in its own process with the device fds
 * the broker gave it, which Linux 6.6 and later accept. Both fds are checked first: -EBADF if
 * kvm_vfio_fd is not a KVM-VFIO device or device_fd not a VFIO device fd; -EOPNOTSUPP when the
 * kernel accepts only group fds there (before 6.6); -EIO when the VM belongs to another process. */
int vfio_broker_kvm_vfio_add_device(int kvm_vfio_fd, int device_fd);
int vfio_broker_kvm_vfio_del_device(int kvm_vfio_fd, int device_fd);

/* Called with the container's BalloonInhibited whenever it changes. */
typedef void (*vfio_broker_container_balloon_handler)(vfio_broker_container *c, bool inhibited, void *userdata);
int vfio_broker_container_watch_balloon(vfio_broker_container *c, vfio_broker_container_balloon_handler handler,
                                        void *userdata);

/* Close(): unmaps everything, detaches every group, and frees the handle (also on failure). */
int vfio_broker_container_close(vfio_broker_container *c);
/* Frees the handle only; the container lives on until Close() or the connection's end. */
vfio_broker_container *vfio_broker_container_free(vfio_broker_container *c);

#ifdef __cplusplus
}
#endif

#endif
