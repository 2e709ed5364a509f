/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The property dicts of the broker's objects (Manager, Group, Container) read into the public structs,
 * and the functions that free those. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "libvfio-broker-private.h"
#include "macro.h"

_public_ int vfio_broker_get_status(vfio_broker *b, vfio_broker_status *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        vfio_broker_status s = {};
        const char *name;
        int r;

        if (!b || !ret)
                return -EINVAL;
        r = client_call(b, ROOT_PATH, "org.freedesktop.DBus.Properties", "GetAll", &reply, "s", MANAGER_IFACE);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *str;
                int bv;

                r = sd_bus_message_read(reply, "s", &name);
                if (r < 0)
                        break;
                if (strcmp(name, "Version") == 0 || strcmp(name, "Backend") == 0) {
                        r = sd_bus_message_read(reply, "v", "s", &str);
                        if (r >= 0) {
                                char **field = name[0] == 'V' ? &s.version : &s.backend;
                                free(*field);
                                *field = strdup(str);
                        }
                } else if (strcmp(name, "BalloonInhibited") == 0) {
                        r = sd_bus_message_read(reply, "v", "b", &bv);
                        s.balloon_inhibited = bv;
                } else if (strcmp(name, "BalloonInhibitors") == 0)
                        r = sd_bus_message_read(reply, "v", "u", &s.balloon_inhibitors);
                else
                        r = sd_bus_message_skip(reply, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        if (r < 0 || !s.version || !s.backend) {
                vfio_broker_status_clear(&s);
                return client_fail_errno(b, r < 0 ? r : -EBADMSG, "Malformed Manager properties");
        }
        *ret = s;
        return 0;
}

_public_ void vfio_broker_status_clear(vfio_broker_status *s) {
        if (!s)
                return;
        free(s->version);
        free(s->backend);
        *s = (vfio_broker_status) {};
}

static int read_strv(sd_bus_message *m, char ***ret) {
        return sd_bus_message_read_strv(m, ret);
}

/* Reads one a{sv} of the Group interface. */
int client_parse_group(sd_bus_message *m, vfio_broker_group *g) {
        const char *name;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;
                if (strcmp(name, "Id") == 0)
                        r = sd_bus_message_read(m, "v", "u", &g->id);
                else if (strcmp(name, "Viable") == 0) {
                        int v;
                        r = sd_bus_message_read(m, "v", "b", &v);
                        g->viable = v;
                } else if (strcmp(name, "Container") == 0) {
                        const char *o;
                        r = sd_bus_message_read(m, "v", "o", &o);
                        if (r >= 0 && strcmp(o, "/") != 0 && !(g->container = strdup(o)))
                                r = -ENOMEM;
                } else if (strcmp(name, "Devices") == 0) {
                        r = sd_bus_message_enter_container(m, 'v', "as");
                        if (r >= 0)
                                r = read_strv(m, &g->devices);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else
                        r = sd_bus_message_skip(m, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return r;
}

int client_parse_container(sd_bus_message *m, vfio_broker_container_info *c) {
        const char *name;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *s;
                int v;

                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;
                if (strcmp(name, "Owner") == 0 || strcmp(name, "Label") == 0) {
                        r = sd_bus_message_read(m, "v", "s", &s);
                        char **field = name[0] == 'O' ? &c->owner : &c->label;
                        if (r >= 0 && !(*field = strdup(s)))
                                r = -ENOMEM;
                } else if (strcmp(name, "UID") == 0)
                        r = sd_bus_message_read(m, "v", "u", &c->uid);
                else if (strcmp(name, "Mappings") == 0)
                        r = sd_bus_message_read(m, "v", "u", &c->mappings);
                else if (strcmp(name, "MappedBytes") == 0)
                        r = sd_bus_message_read(m, "v", "t", &c->mapped_bytes);
                else if (strcmp(name, "PageSizes") == 0)
                        r = sd_bus_message_read(m, "v", "t", &c->page_sizes);
                else if (strcmp(name, "DmaAvailable") == 0)
                        r = sd_bus_message_read(m, "v", "u", &c->dma_available);
                else if (strcmp(name, "DirtyTracking") == 0) {
                        r = sd_bus_message_read(m, "v", "b", &v);
                        c->dirty_tracking = v;
                } else if (strcmp(name, "DiscardableRanges") == 0) {
                        uint64_t first, last, granule;
                        r = sd_bus_message_enter_container(m, 'v', "a(ttt)");
                        if (r >= 0)
                                r = sd_bus_message_enter_container(m, 'a', "(ttt)");
                        while (r >= 0 && (r = sd_bus_message_read(m, "(ttt)", &first, &last, &granule)) > 0) {
                                vfio_broker_discardable_range *a = realloc(c->discardable,
                                                                           (c->n_discardable + 1) * sizeof(*a));
                                if (!a)
                                        return -ENOMEM;
                                c->discardable = a;
                                a[c->n_discardable++] = (vfio_broker_discardable_range) { first, last, granule };
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                }
                else if (strcmp(name, "VfioUserDevices") == 0) {
                        r = sd_bus_message_enter_container(m, 'v', "as");
                        if (r >= 0)
                                r = sd_bus_message_read_strv(m, &c->vfio_user_devices);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else if (strcmp(name, "BalloonInhibited") == 0) {
                        r = sd_bus_message_read(m, "v", "b", &v);
                        c->balloon_inhibited = v;
                } else if (strcmp(name, "Groups") == 0) {
                        const void *p;
                        size_t n;
                        r = sd_bus_message_enter_container(m, 'v', "au");
                        if (r >= 0)
                                r = sd_bus_message_read_array(m, 'u', &p, &n);
                        if (r >= 0) {
                                c->n_groups = n / sizeof(uint32_t);
                                c->groups = calloc(c->n_groups ? c->n_groups : 1, sizeof(uint32_t));
                                if (!c->groups)
                                        return -ENOMEM;
                                memcpy(c->groups, p, c->n_groups * sizeof(uint32_t));
                                r = sd_bus_message_exit_container(m);
                        }
                } else if (strcmp(name, "IovaRanges") == 0) {
                        uint64_t first, last;
                        r = sd_bus_message_enter_container(m, 'v', "a(tt)");
                        if (r >= 0)
                                r = sd_bus_message_enter_container(m, 'a', "(tt)");
                        while (r >= 0 && (r = sd_bus_message_read(m, "(tt)", &first, &last)) > 0) {
                                vfio_broker_iova_range *a = realloc(c->iova_ranges,
                                                                    (c->n_iova_ranges + 1) * sizeof(*a));
                                if (!a)
                                        return -ENOMEM;
                                c->iova_ranges = a;
                                a[c->n_iova_ranges++] = (vfio_broker_iova_range) { first, last };
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else
                        r = sd_bus_message_skip(m, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return r;
}

int client_container_info_by_path(vfio_broker *b, const char *path, vfio_broker_container_info *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        vfio_broker_container_info info = {};
        int r;

        r = client_call(b, path, "org.freedesktop.DBus.Properties", "GetAll", &reply, "s", CONTAINER_IFACE);
        if (r < 0)
                return r;
        info.path = strdup(path);
        if (!info.path)
                return -ENOMEM;
        r = client_parse_container(reply, &info);
        if (r < 0) {
                vfio_broker_container_info_clear(&info);
                return client_fail_errno(b, r, "Malformed container properties");
        }
        *ret = info;
        return 0;
}

_public_ void vfio_broker_groups_free(vfio_broker_group *groups, size_t n) {
        for (size_t i = 0; groups && i < n; i++) {
                strv_free(groups[i].devices);
                free(groups[i].container);
        }
        free(groups);
}

_public_ void vfio_broker_container_info_clear(vfio_broker_container_info *info) {
        if (!info)
                return;
        free(info->path);
        free(info->owner);
        free(info->label);
        free(info->groups);
        free(info->iova_ranges);
        free(info->discardable);
        strv_free(info->vfio_user_devices);
        *info = (vfio_broker_container_info) {};
}

_public_ void vfio_broker_container_infos_free(vfio_broker_container_info *infos, size_t n) {
        for (size_t i = 0; infos && i < n; i++)
                vfio_broker_container_info_clear(&infos[i]);
        free(infos);
}
