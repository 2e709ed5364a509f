/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A container handle and the calls on it: groups, devices, Map/Unmap, vfio-user, hot reset, dirty
 * tracking, discardable memory, closing. Update, split to fit the transport, is in
 * libvfio-broker-update.c. */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "libvfio-broker-private.h"
#include "macro.h"

_public_ int vfio_broker_close_container(vfio_broker *b, const char *path_or_id) {
        _cleanup_free_ char *path = NULL;
        int r;

        if (!b)
                return -EINVAL;
        r = client_resolve_container_path(b, path_or_id, &path);
        if (r < 0)
                return r;
        return client_call(b, path, CONTAINER_IFACE, "Close", NULL, NULL);
}

_public_ int vfio_broker_container_new(vfio_broker *b, const char *label, vfio_broker_container **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        vfio_broker_container *c;
        const char *path;
        int r;

        if (!b || !ret)
                return -EINVAL;
        if (label)
                r = client_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 1, "Label", "s",
                                label);
        else
                r = client_call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                return client_fail_errno(b, r, "Malformed CreateContainer reply");

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->path = strdup(path);
        if (!c->path) {
                free(c);
                return -ENOMEM;
        }
        c->broker = vfio_broker_ref(b);
        *ret = c;
        return 0;
}

_public_ const char *vfio_broker_container_get_path(const vfio_broker_container *c) {
        return c ? c->path : NULL;
}

_public_ int vfio_broker_container_attach_group(vfio_broker_container *c, uint32_t group) {
        return c ? client_call(c->broker, c->path, CONTAINER_IFACE, "AttachGroup", NULL, "u", group) : -EINVAL;
}

_public_ int vfio_broker_container_detach_group(vfio_broker_container *c, uint32_t group) {
        return c ? client_call(c->broker, c->path, CONTAINER_IFACE, "DetachGroup", NULL, "u", group) : -EINVAL;
}

_public_ int vfio_broker_container_open_device(vfio_broker_container *c, const char *device) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd, r;

        if (!c || !device)
                return -EINVAL;
        r = client_call(c->broker, c->path, CONTAINER_IFACE, "OpenDevice", &reply, "s", device);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "h", &fd);
        if (r < 0)
                return client_fail_errno(c->broker, r, "Malformed OpenDevice reply");
        /* The message owns its fd; the caller gets its own. */
        fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        return fd < 0 ? client_fail_errno(c->broker, -errno, "Cannot duplicate the device fd") : fd;
}

_public_ int vfio_broker_container_map(vfio_broker_container *c, int memory_fd, uint64_t offset, uint64_t size,
                                       uint64_t iova, uint32_t flags) {
        if (!c || memory_fd < 0)
                return -EINVAL;
        return client_call(c->broker, c->path, CONTAINER_IFACE, "Map", NULL, "htttu", memory_fd, offset, size, iova,
                           flags);
}

_public_ int vfio_broker_container_unmap(vfio_broker_container *c, uint64_t iova, uint64_t size) {
        return c ? client_call(c->broker, c->path, CONTAINER_IFACE, "Unmap", NULL, "tt", iova, size) : -EINVAL;
}

_public_ int vfio_broker_container_serve_vfio_user(vfio_broker_container *c, const char *device, int listener_fd) {
        if (!c || !device || listener_fd < 0)
                return -EINVAL;
        return client_call(c->broker, c->path, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", device, listener_fd);
}

_public_ int vfio_broker_container_stop_vfio_user(vfio_broker_container *c, const char *device) {
        return c && device ? client_call(c->broker, c->path, CONTAINER_IFACE, "StopVfioUser", NULL, "s", device)
                           : -EINVAL;
}

_public_ int vfio_broker_container_hot_reset(vfio_broker_container *c, const char *device) {
        return c && device ? client_call(c->broker, c->path, CONTAINER_IFACE, "HotReset", NULL, "s", device) : -EINVAL;
}

_public_ int vfio_broker_container_start_dirty_tracking(vfio_broker_container *c) {
        return c ? client_call(c->broker, c->path, CONTAINER_IFACE, "StartDirtyTracking", NULL, NULL) : -EINVAL;
}

_public_ int vfio_broker_container_stop_dirty_tracking(vfio_broker_container *c) {
        return c ? client_call(c->broker, c->path, CONTAINER_IFACE, "StopDirtyTracking", NULL, NULL) : -EINVAL;
}

static int dirty_bitmap_call(vfio_broker_container *c, const char *method, uint64_t iova, uint64_t size,
                             uint64_t page_size, int bitmap_fd, uint64_t bitmap_offset, uint64_t *ret_dirty_pages) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t dirty;
        int r;

        if (!c || bitmap_fd < 0)
                return -EINVAL;
        r = client_call(c->broker, c->path, CONTAINER_IFACE, method, &reply, "tttht", iova, size,
                        page_size, bitmap_fd, bitmap_offset);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "t", &dirty);
        if (r < 0)
                return client_fail_errno(c->broker, r, "Malformed dirty bitmap reply");
        if (ret_dirty_pages)
                *ret_dirty_pages = dirty;
        return 0;
}

_public_ int vfio_broker_container_get_dirty_bitmap(vfio_broker_container *c, uint64_t iova, uint64_t size,
                                                    uint64_t page_size, int bitmap_fd, uint64_t bitmap_offset,
                                                    uint64_t *ret_dirty_pages) {
        return dirty_bitmap_call(c, "GetDirtyBitmap", iova, size, page_size, bitmap_fd, bitmap_offset,
                                 ret_dirty_pages);
}

_public_ int vfio_broker_container_unmap_dirty(vfio_broker_container *c, uint64_t iova, uint64_t size,
                                               uint64_t page_size, int bitmap_fd, uint64_t bitmap_offset,
                                               uint64_t *ret_dirty_pages) {
        return dirty_bitmap_call(c, "UnmapWithDirtyBitmap", iova, size, page_size, bitmap_fd, bitmap_offset,
                                 ret_dirty_pages);
}

_public_ int vfio_broker_container_map_discardable(vfio_broker_container *c, int memory_fd, uint64_t offset,
                                                   uint64_t size, uint64_t iova, uint32_t flags, uint64_t granule,
                                                   bool populated) {
        if (!c || memory_fd < 0)
                return -EINVAL;
        return client_call(c->broker, c->path, CONTAINER_IFACE, "MapDiscardable", NULL, "htttutb", memory_fd, offset,
                           size, iova, flags, granule, (int) populated);
}

_public_ int vfio_broker_container_discard(vfio_broker_container *c, uint64_t iova, uint64_t size) {
        return c ? client_call(c->broker, c->path, CONTAINER_IFACE, "Discard", NULL, "tt", iova, size) : -EINVAL;
}

_public_ int vfio_broker_container_populate(vfio_broker_container *c, uint64_t iova, uint64_t size) {
        return c ? client_call(c->broker, c->path, CONTAINER_IFACE, "Populate", NULL, "tt", iova, size) : -EINVAL;
}

_public_ int vfio_broker_container_get_info(vfio_broker_container *c, vfio_broker_container_info *ret) {
        if (!c || !ret)
                return -EINVAL;
        return client_container_info_by_path(c->broker, c->path, ret);
}

_public_ int vfio_broker_container_close(vfio_broker_container *c) {
        int r;

        if (!c)
                return -EINVAL;
        r = client_call(c->broker, c->path, CONTAINER_IFACE, "Close", NULL, NULL);
        vfio_broker_container_free(c);
        return r;
}

_public_ vfio_broker_container *vfio_broker_container_free(vfio_broker_container *c) {
        if (!c)
                return NULL;
        sd_bus_slot_unref(c->balloon_slot);
        vfio_broker_unref(c->broker);
        free(c->path);
        free(c);
        return NULL;
}
