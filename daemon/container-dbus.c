/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "bus-error.h"
#include "caller.h"
#include "container-dbus.h"
#include "group.h"
#include "log.h"
#include "vfio-user-dbus.h"

static int container_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                                 void **found, sd_bus_error *error) {
        Broker *b = userdata;
        const char *p;
        char *end;
        uint64_t id;

        /* Only the documented path: the prefix, one slash, the id in decimal without leading zeros (a
         * fallback vtable sees every path below the prefix, /container/x/3 too). */
        if (strncmp(path, BROKER_CONTAINER_PREFIX "/", strlen(BROKER_CONTAINER_PREFIX "/")) != 0)
                return 0;
        p = path + strlen(BROKER_CONTAINER_PREFIX "/");
        if (*p < '1' || *p > '9')
                return 0;
        errno = 0;
        id = strtoull(p, &end, 10);
        if (errno != 0 || *end != 0)
                return 0;

        Container *c = broker_find_container(b, id);
        if (!c)
                return 0;
        *found = c;
        return 1;
}

static int container_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***nodes,
                                     sd_bus_error *error) {
        Broker *b = userdata;
        _cleanup_strv_free_ char **l = NULL;
        size_t i = 0;

        l = calloc(b->n_containers + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (Container *c = b->containers; c; c = c->next) {
                l[i] = strdup(c->path);
                if (!l[i])
                        return -ENOMEM;
                i++;
        }
        *nodes = TAKE_PTR(l);
        return 1;
}

static int container_verify_caller(Container *c, sd_bus_message *m, const PolkitCheck *extra, sd_bus_error *error) {
        return caller_verify_owner(c->broker, m, c->path, c->owner, c->uid, extra, error);
}

static int method_attach_group(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        _cleanup_free_ char *devices = NULL;
        char group_id[16];
        uint32_t id;
        Group *g;
        int r;

        r = sd_bus_message_read(m, "u", &id);
        if (r < 0)
                return r;

        /* Details let a rule grant one group or one device. A group that does not exist is
         * authorized with empty devices and then fails with NoSuchGroup: no probing for existence
         * without authorization would gain anything, the Group objects are public. */
        g = broker_find_group(c->broker, id);
        if (g) {
                (void) group_refresh(g);
                devices = group_devices_joined(g);
                if (!devices)
                        return -ENOMEM;
        }
        (void) snprintf(group_id, sizeof(group_id), "%" PRIu32, id);
        const char *details[] = { "group", group_id, "devices", devices ?: "", NULL };
        PolkitCheck check = { POLKIT_ACTION_ATTACH_GROUP, details };

        r = container_verify_caller(c, m, &check, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = container_attach_group(c, id, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);

        return sd_bus_reply_method_return(m, NULL);
}

static int method_detach_group(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        uint32_t id;
        int r;

        r = sd_bus_message_read(m, "u", &id);
        if (r < 0)
                return r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = container_detach_group(c, id, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);

        return sd_bus_reply_method_return(m, NULL);
}

static int method_open_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        _cleanup_close_ int fd = -EBADF;
        const char *device;
        int r;

        r = sd_bus_message_read(m, "s", &device);
        if (r < 0)
                return r;
        if (device[0] == 0 || strchr(device, '/'))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "\"%s\" is not a device name; use the form of the Group objects' "
                                         "Devices property, e.g. 0000:01:00.0.", device);

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        fd = container_open_device(c, device, &e);
        if (fd < 0)
                return bus_error_from_broker(error, fd, &e);

        /* The reply takes its own copy; ours is closed on return. */
        return sd_bus_reply_method_return(m, "h", fd);
}

static int method_map(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        uint64_t offset, size, iova;
        uint32_t flags;
        int fd, r;

        /* fd is borrowed from the message; memory.c duplicates what it keeps. */
        r = sd_bus_message_read(m, "htttu", &fd, &offset, &size, &iova, &flags);
        if (r < 0)
                return r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = container_map(c, fd, offset, size, iova, flags, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);

        return sd_bus_reply_method_return(m, NULL);
}

/* Unmap, Discard, Populate: (t iova, t size) in, nothing out. */
static int method_range(sd_bus_message *m, Container *c, sd_bus_error *error,
                        int (*op)(Container *c, uint64_t iova, uint64_t size, BrokerError *e)) {
        BrokerError e = BROKER_ERROR_INIT;
        uint64_t iova, size;
        int r;

        r = sd_bus_message_read(m, "tt", &iova, &size);
        if (r < 0)
                return r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = op(c, iova, size, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);

        return sd_bus_reply_method_return(m, NULL);
}

static int method_unmap(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_range(m, userdata, error, container_unmap);
}

static int method_update(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        _cleanup_free_ UpdateUnmap *unmaps = NULL;
        _cleanup_free_ UpdateMap *maps = NULL;
        _cleanup_free_ int *fds = NULL;
        size_t n_unmaps = 0, n_maps = 0, n_fds = 0, cap_unmaps = 0, cap_maps = 0;
        int r;

        /* Parse everything first: the fds are borrowed from the message, memory.c dups what it keeps.
         * The arrays grow by doubling: one element at a time is quadratic in 65536 entries. */
        r = sd_bus_message_enter_container(m, 'a', "(tt)");
        if (r < 0)
                return r;
        for (;;) {
                UpdateUnmap u;
                r = sd_bus_message_read(m, "(tt)", &u.iova, &u.size);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (n_unmaps >= BROKER_UPDATE_MAX)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "At most %d unmaps per Update.",
                                                 BROKER_UPDATE_MAX);
                if (n_unmaps == cap_unmaps) {
                        cap_unmaps = cap_unmaps ? cap_unmaps * 2 : 16;
                        UpdateUnmap *a = realloc(unmaps, cap_unmaps * sizeof(*a));
                        if (!a)
                                return -ENOMEM;
                        unmaps = a;
                }
                unmaps[n_unmaps++] = u;
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(m, 'a', "h");
        if (r < 0)
                return r;
        for (;;) {
                int fd;
                r = sd_bus_message_read(m, "h", &fd);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (n_fds >= BROKER_UPDATE_FDS_MAX)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "At most %d memory fds per Update: no transport passes more in "
                                                 "one message (dbus-daemon only %d unless configured otherwise).",
                                                 BROKER_UPDATE_FDS_MAX, BROKER_BUS_MESSAGE_FDS_MAX);
                int *a = realloc(fds, (n_fds + 1) * sizeof(int));
                if (!a)
                        return -ENOMEM;
                fds = a;
                fds[n_fds++] = fd;
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(m, 'a', "(utttu)");
        if (r < 0)
                return r;
        for (;;) {
                UpdateMap u;
                r = sd_bus_message_read(m, "(utttu)", &u.memory, &u.offset, &u.size, &u.iova, &u.flags);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (n_maps >= BROKER_UPDATE_MAX)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "At most %d maps per Update.",
                                                 BROKER_UPDATE_MAX);
                if (n_maps == cap_maps) {
                        cap_maps = cap_maps ? cap_maps * 2 : 16;
                        UpdateMap *a = realloc(maps, cap_maps * sizeof(*a));
                        if (!a)
                                return -ENOMEM;
                        maps = a;
                }
                maps[n_maps++] = u;
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = container_update(c, unmaps, n_unmaps, fds, n_fds, maps, n_maps, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);

        return sd_bus_reply_method_return(m, NULL);
}

static int method_dirty_tracking(sd_bus_message *m, void *userdata, sd_bus_error *error, bool start) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        int r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = container_set_dirty_tracking(c, start, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_start_dirty_tracking(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_dirty_tracking(m, userdata, error, true);
}

static int method_stop_dirty_tracking(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_dirty_tracking(m, userdata, error, false);
}

static int method_dirty_bitmap(sd_bus_message *m, void *userdata, sd_bus_error *error, bool unmap) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        uint64_t iova, size, page_size, offset, dirty = 0;
        int fd, r;

        r = sd_bus_message_read(m, "ttt", &iova, &size, &page_size);
        if (r < 0)
                return r;
        r = sd_bus_message_read(m, "ht", &fd, &offset);
        if (r < 0)
                return r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        if (unmap)
                r = container_unmap_dirty(c, iova, size, page_size, fd, offset, &dirty, &e);
        else
                r = container_dirty_bitmap(c, iova, size, page_size, fd, offset, &dirty, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);
        return sd_bus_reply_method_return(m, "t", dirty);
}

static int method_get_dirty_bitmap(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_dirty_bitmap(m, userdata, error, false);
}

static int method_unmap_dirty(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_dirty_bitmap(m, userdata, error, true);
}

static int method_hot_reset(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        const char *device;
        int r;

        r = sd_bus_message_read(m, "s", &device);
        if (r < 0)
                return r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = container_hot_reset(c, device, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_map_discardable(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        uint64_t offset, size, iova, granule;
        uint32_t flags;
        int fd, populated, r;

        r = sd_bus_message_read(m, "htttutb", &fd, &offset, &size, &iova, &flags, &granule, &populated);
        if (r < 0)
                return r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = container_map_discardable(c, fd, offset, size, iova, flags, granule, populated, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_discard(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_range(m, userdata, error, container_discard);
}

static int method_populate(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_range(m, userdata, error, container_populate);
}

static int method_close(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        int r;

        r = container_verify_caller(c, m, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        container_close(c);
        return sd_bus_reply_method_return(m, NULL);
}

static int property_get_groups(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        return sd_bus_message_append_array(reply, 'u', c->groups, c->n_groups * sizeof(uint32_t));
}

static int property_get_mappings(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) container_n_mappings(c));
}

static int property_get_mapped_bytes(sd_bus *bus, const char *path, const char *interface,
                                     const char *property, sd_bus_message *reply, void *userdata,
                                     sd_bus_error *error) {
        Container *c = userdata;
        return sd_bus_message_append(reply, "t", container_mapped_bytes(c));
}

static int property_get_balloon_inhibited(sd_bus *bus, const char *path, const char *interface,
                                          const char *property, sd_bus_message *reply, void *userdata,
                                          sd_bus_error *error) {
        Container *c = userdata;
        return sd_bus_message_append(reply, "b", container_balloon_inhibited(c));
}

static int property_get_iova_ranges(sd_bus *bus, const char *path, const char *interface,
                                    const char *property, sd_bus_message *reply, void *userdata,
                                    sd_bus_error *error) {
        Container *c = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(tt)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->iommu.n_ranges; i++) {
                r = sd_bus_message_append(reply, "(tt)", c->iommu.ranges[i].first, c->iommu.ranges[i].last);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_dma_available(sd_bus *bus, const char *path, const char *interface,
                                      const char *property, sd_bus_message *reply, void *userdata,
                                      sd_bus_error *error) {
        return sd_bus_message_append(reply, "u", container_dma_available(userdata));
}

static int property_get_page_sizes(sd_bus *bus, const char *path, const char *interface,
                                   const char *property, sd_bus_message *reply, void *userdata,
                                   sd_bus_error *error) {
        Container *c = userdata;
        return sd_bus_message_append(reply, "t", c->n_groups > 0 ? c->iommu.page_sizes : UINT64_C(0));
}

static int property_get_dirty_tracking(sd_bus *bus, const char *path, const char *interface,
                                       const char *property, sd_bus_message *reply, void *userdata,
                                       sd_bus_error *error) {
        Container *c = userdata;
        return sd_bus_message_append(reply, "b", c->dirty_tracking);
}

static int property_get_discardable_ranges(sd_bus *bus, const char *path, const char *interface,
                                           const char *property, sd_bus_message *reply, void *userdata,
                                           sd_bus_error *error) {
        Container *c = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(ttt)");
        if (r < 0)
                return r;
        for (MappingTableNode *n = mapping_table_first(&c->discardable); n; n = mapping_table_next(n)) {
                r = sd_bus_message_append(reply, "(ttt)", n->first, n->last,
                                          container_of(n, DiscardRegion, node)->granule);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static const sd_bus_vtable container_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("AttachGroup", SD_BUS_ARGS("u", group), SD_BUS_NO_RESULT,
                                method_attach_group, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DetachGroup", SD_BUS_ARGS("u", group), SD_BUS_NO_RESULT,
                                method_detach_group, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenDevice", SD_BUS_ARGS("s", device), SD_BUS_RESULT("h", fd),
                                method_open_device, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Map",
                                SD_BUS_ARGS("h", memory, "t", offset, "t", size, "t", iova, "u", flags),
                                SD_BUS_NO_RESULT, method_map, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Unmap", SD_BUS_ARGS("t", iova, "t", size), SD_BUS_NO_RESULT,
                                method_unmap, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Update",
                                SD_BUS_ARGS("a(tt)", unmaps, "ah", memory, "a(utttu)", maps),
                                SD_BUS_NO_RESULT, method_update, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("MapDiscardable",
                                SD_BUS_ARGS("h", memory, "t", offset, "t", size, "t", iova, "u", flags,
                                            "t", granule, "b", populated),
                                SD_BUS_NO_RESULT, method_map_discardable, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Discard", SD_BUS_ARGS("t", iova, "t", size), SD_BUS_NO_RESULT,
                                method_discard, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Populate", SD_BUS_ARGS("t", iova, "t", size), SD_BUS_NO_RESULT,
                                method_populate, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("HotReset", SD_BUS_ARGS("s", device), SD_BUS_NO_RESULT,
                                method_hot_reset, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("StartDirtyTracking", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT,
                                method_start_dirty_tracking, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("StopDirtyTracking", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT,
                                method_stop_dirty_tracking, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetDirtyBitmap",
                                SD_BUS_ARGS("t", iova, "t", size, "t", page_size, "h", bitmap, "t", bitmap_offset),
                                SD_BUS_RESULT("t", dirty_pages), method_get_dirty_bitmap, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("UnmapWithDirtyBitmap",
                                SD_BUS_ARGS("t", iova, "t", size, "t", page_size, "h", bitmap, "t", bitmap_offset),
                                SD_BUS_RESULT("t", dirty_pages), method_unmap_dirty, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ServeVfioUser", SD_BUS_ARGS("s", device, "h", listener), SD_BUS_NO_RESULT,
                                vfio_user_dbus_method_serve, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("StopVfioUser", SD_BUS_ARGS("s", device), SD_BUS_NO_RESULT,
                                vfio_user_dbus_method_stop, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Close", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT,
                                method_close, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("Owner", "s", NULL, offsetof(Container, owner), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("UID", "u", NULL, offsetof(Container, uid), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Label", "s", NULL, offsetof(Container, label), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Groups", "au", property_get_groups, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Mappings", "u", property_get_mappings, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("MappedBytes", "t", property_get_mapped_bytes, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BalloonInhibited", "b", property_get_balloon_inhibited, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("IovaRanges", "a(tt)", property_get_iova_ranges, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("PageSizes", "t", property_get_page_sizes, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("DmaAvailable", "u", property_get_dma_available, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("DirtyTracking", "b", property_get_dirty_tracking, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("DiscardableRanges", "a(ttt)", property_get_discardable_ranges, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("VfioUserDevices", "as", vfio_user_dbus_property_devices, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END,
};

int container_dbus_register_on(Broker *b, sd_bus *bus) {
        return bus_add_fallback_objects(bus, BROKER_CONTAINER_PREFIX, BROKER_CONTAINER_INTERFACE, container_vtable, container_object_find, container_node_enumerator, b);
}

int container_dbus_emit_changed(Container *c, ContainerProperty mask) {
        static const char * const names[] = {
                "Groups", "Mappings", "MappedBytes", "BalloonInhibited", "IovaRanges", "PageSizes", "DmaAvailable",
                "DirtyTracking", "DiscardableRanges",
        };
        const char *l[ELEMENTSOF(names) + 1];
        size_t n = 0;

        _Static_assert(ELEMENTSOF(names) == __builtin_popcount(_CONTAINER_PROPERTY_ALL), "a name per property");
        if (!c->broker->bus)
                return 0;
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (mask & (1u << i))
                        l[n++] = names[i];
        l[n] = NULL;
        if (n == 0)
                return 0;
        return sd_bus_emit_properties_changed_strv(c->broker->bus, c->path, BROKER_CONTAINER_INTERFACE,
                                                   (char **) l);
}
