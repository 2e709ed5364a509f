/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "container.h"
#include "group.h"
#include "group-dbus.h"

static int group_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                             void **found, sd_bus_error *error) {
        Broker *b = userdata;
        const char *p;
        char *end;
        unsigned long id;
        Group *g;

        /* Only the documented path: the prefix, one slash, the id in decimal without leading zeros. */
        if (strncmp(path, BROKER_GROUP_PREFIX "/", strlen(BROKER_GROUP_PREFIX "/")) != 0)
                return 0;
        p = path + strlen(BROKER_GROUP_PREFIX "/");
        if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] != 0))
                return 0;
        errno = 0;
        id = strtoul(p, &end, 10);
        if (errno != 0 || *end != 0 || id > UINT32_MAX)
                return 0;

        g = broker_find_group(b, (unsigned) id);
        if (!g)
                return 0;
        *found = g;
        return 1;
}

static int group_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***nodes,
                                 sd_bus_error *error) {
        Broker *b = userdata;
        _cleanup_strv_free_ char **l = NULL;

        l = calloc(b->n_groups + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < b->n_groups; i++) {
                l[i] = strdup(b->groups[i]->path);
                if (!l[i])
                        return -ENOMEM;
        }
        *nodes = TAKE_PTR(l);
        return 1;
}

static int property_get_devices(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Group *g = userdata;

        /* As last read: the device monitor re-reads the group whenever the host's devices change. */
        return sd_bus_message_append_strv(reply, g->devices);
}

static int property_get_viable(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Group *g = userdata;

        return sd_bus_message_append(reply, "b", g->viable);
}

static int property_get_container(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Group *g = userdata;

        return sd_bus_message_append(reply, "o", g->container ? g->container->path : "/");
}

static const sd_bus_vtable group_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Id", "u", NULL, offsetof(Group, id), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Devices", "as", property_get_devices, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Viable", "b", property_get_viable, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Container", "o", property_get_container, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END,
};

int group_dbus_register_on(Broker *b, sd_bus *bus) {
        return bus_add_fallback_objects(bus, BROKER_GROUP_PREFIX, BROKER_GROUP_INTERFACE, group_vtable, group_object_find, group_node_enumerator, b);
}

int group_dbus_emit_added(Group *g) {
        if (!g->broker->bus)
                return 0;
        return sd_bus_emit_object_added(g->broker->bus, g->path);
}

int group_dbus_emit_removed(Group *g) {
        if (!g->broker->bus)
                return 0;
        return sd_bus_emit_object_removed(g->broker->bus, g->path);
}

int group_dbus_emit_changed(Group *g) {
        if (!g->broker->bus)
                return 0;
        /* group_changed carries no mask: a group changes rarely (an attach, a driver bound), so all
         * three go, each with its current value. */
        return sd_bus_emit_properties_changed(g->broker->bus, g->path, BROKER_GROUP_INTERFACE,
                                              "Devices", "Viable", "Container", NULL);
}
