/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Listings of the broker's groups and containers (GetManagedObjects), sorted by id, and naming a
 * container by its id or object path. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libvfio-broker-private.h"
#include "macro.h"

/* Walks GetManagedObjects, calling parse for each object that has iface. */
static int managed_objects(vfio_broker *b, const char *want_iface,
                           int (*parse)(sd_bus_message *m, const char *path, void *userdata), void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path, *iface;
        int r;

        r = client_call(b, ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", &reply, NULL);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                r = sd_bus_message_read(reply, "o", &path);
                if (r >= 0)
                        r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                        r = sd_bus_message_read(reply, "s", &iface);
                        if (r >= 0)
                                r = strcmp(iface, want_iface) == 0 ? parse(reply, path, userdata)
                                                                  : sd_bus_message_skip(reply, "a{sv}");
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        return r < 0 ? client_fail_errno(b, r, "Malformed GetManagedObjects reply") : 0;
}

typedef struct GroupList {
        vfio_broker_group *groups;
        size_t n;
} GroupList;

static int collect_group(sd_bus_message *m, const char *path, void *userdata) {
        GroupList *l = userdata;
        vfio_broker_group *a = realloc(l->groups, (l->n + 1) * sizeof(*a));
        if (!a)
                return -ENOMEM;
        l->groups = a;
        a[l->n] = (vfio_broker_group) {};
        return client_parse_group(m, &a[l->n++]);
}

static int group_compare(const void *a, const void *b) {
        const vfio_broker_group *x = a, *y = b;
        return x->id < y->id ? -1 : x->id > y->id;
}

_public_ int vfio_broker_list_groups(vfio_broker *b, vfio_broker_group **ret, size_t *ret_n) {
        GroupList l = {};
        int r;

        if (!b || !ret || !ret_n)
                return -EINVAL;
        r = managed_objects(b, GROUP_IFACE, collect_group, &l);
        if (r < 0) {
                vfio_broker_groups_free(l.groups, l.n);
                return r;
        }
        if (l.n > 0)
                qsort(l.groups, l.n, sizeof(*l.groups), group_compare);
        *ret = l.groups;
        *ret_n = l.n;
        return 0;
}


typedef struct ContainerList {
        vfio_broker_container_info *infos;
        size_t n;
} ContainerList;

static int collect_container(sd_bus_message *m, const char *path, void *userdata) {
        ContainerList *l = userdata;
        vfio_broker_container_info *a = realloc(l->infos, (l->n + 1) * sizeof(*a));
        if (!a)
                return -ENOMEM;
        l->infos = a;
        a[l->n] = (vfio_broker_container_info) { .path = strdup(path) };
        if (!a[l->n].path)
                return -ENOMEM;
        return client_parse_container(m, &a[l->n++]);
}

static uint64_t container_id(const char *path) {
        return strtoull(path + strlen(CONTAINER_PREFIX), NULL, 10);
}

static int container_compare(const void *a, const void *b) {
        uint64_t x = container_id(((const vfio_broker_container_info *) a)->path);
        uint64_t y = container_id(((const vfio_broker_container_info *) b)->path);
        return x < y ? -1 : x > y;
}

_public_ int vfio_broker_list_containers(vfio_broker *b, vfio_broker_container_info **ret, size_t *ret_n) {
        ContainerList l = {};
        int r;

        if (!b || !ret || !ret_n)
                return -EINVAL;
        r = managed_objects(b, CONTAINER_IFACE, collect_container, &l);
        if (r < 0) {
                vfio_broker_container_infos_free(l.infos, l.n);
                return r;
        }
        if (l.n > 0)
                qsort(l.infos, l.n, sizeof(*l.infos), container_compare);
        *ret = l.infos;
        *ret_n = l.n;
        return 0;
}

/* "3" or "/org/vfiobroker/Broker1/container/3" -> the path. */
int client_resolve_container_path(vfio_broker *b, const char *path_or_id, char **ret) {
        char *end;

        if (!path_or_id || !*path_or_id)
                return -EINVAL;
        if (path_or_id[0] == '/') {
                if (!sd_bus_object_path_is_valid(path_or_id)) {
                        client_set_error(b, SD_BUS_ERROR_INVALID_ARGS, "Not a valid object path.");
                        return -EINVAL;
                }
                *ret = strdup(path_or_id);
        } else {
                errno = 0;
                unsigned long long id = strtoull(path_or_id, &end, 10);
                if (errno != 0 || *end != 0 || path_or_id[0] == '-' || id == 0) {
                        client_set_error(b, SD_BUS_ERROR_INVALID_ARGS,
                                         "A container is named by its id or object path.");
                        return -EINVAL;
                }
                if (asprintf(ret, CONTAINER_PREFIX "%llu", id) < 0)
                        return -ENOMEM;
        }
        return *ret ? 0 : -ENOMEM;
}

_public_ int vfio_broker_get_container_info(vfio_broker *b, const char *path_or_id, vfio_broker_container_info *ret) {
        _cleanup_free_ char *path = NULL;
        int r;

        if (!b || !ret)
                return -EINVAL;
        r = client_resolve_container_path(b, path_or_id, &path);
        if (r < 0)
                return r;
        return client_container_info_by_path(b, path, ret);
}
