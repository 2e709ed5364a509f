/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <string.h>

#include "bus.h"
#include "bus-error.h"
#include "caller.h"
#include "config-build.h"
#include "container.h"
#include "container-dbus.h"
#include "log.h"
#include "owner-watch.h"
#include "manager-dbus.h"
#include "peer.h"

static int method_create_container(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Broker *b = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        _cleanup_free_ char *label = NULL;
        Container *c;
        uid_t uid;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *value;

                r = sd_bus_message_read(m, "s", &key);
                if (r < 0)
                        return r;

                if (strcmp(key, "Label") != 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Unknown option \"%s\"; CreateContainer knows \"Label\" (s).", key);

                r = sd_bus_message_enter_container(m, 'v', "s");
                if (r < 0)
                        return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS,
                                                "Option \"Label\" must be a string (variant type s).");
                r = sd_bus_message_read(m, "s", &value);
                if (r < 0)
                        return r;
                if (strlen(value) > BROKER_LABEL_MAX)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Label is %zu bytes long; at most %d are allowed.",
                                                 strlen(value), BROKER_LABEL_MAX);
                free(label);
                label = strdup(value);
                if (!label)
                        return -ENOMEM;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        r = caller_uid(b, m, &uid);
        if (r < 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot tell the caller's uid.");

        /* On a peer connection the owner is the bus connection that opened it: it must still be there,
         * or nobody would ever close the container. */
        if (!sd_bus_message_get_sender(m) && !bus_name_has_owner(b, caller_name(b, m)))
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED,
                                        "The bus connection that opened this peer connection has left the bus.");

        r = container_new(b, caller_name(b, m), uid, label, &c, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);

        r = owner_watch_track_caller(c, m);
        if (r < 0) {
                container_close(c);
                if (r == -EUSERS)
                        return sd_bus_error_setf(error, BROKER_ERROR_PREFIX "QuotaExceeded",
                                                 "The broker already serves %d VMM connections, its limit; "
                                                 "create containers from a connection that has some.",
                                                 OWNERS_MAX);
                return r;
        }

        return sd_bus_reply_method_return(m, "o", c->path);
}

static int method_open_connection(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Broker *b = userdata;
        _cleanup_close_ int fd = -EBADF;
        BrokerError e = BROKER_ERROR_INIT;
        uid_t uid;
        int r;

        r = caller_uid(b, m, &uid);
        if (r < 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot tell the caller's uid.");

        r = peer_open(b, caller_name(b, m), uid, &fd, &e);
        if (r < 0 && e.code != BROKER_ERROR_NONE)
                return bus_error_from_broker(error, r, &e);
        if (r == -EUSERS)
                return sd_bus_error_setf(error, BROKER_ERROR_PREFIX "QuotaExceeded",
                                         "uid %u already has %d peer connections open (or the broker serves %d "
                                         "VMM connections, its limit); close one first.", uid, PEERS_PER_USER_MAX,
                                         OWNERS_MAX);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot open a peer connection: %m");

        return sd_bus_reply_method_return(m, "h", fd);
}

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", VERSION);
}

static int property_get_backend(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Broker *b = userdata;
        return sd_bus_message_append(reply, "s", backend_name(b->backend));
}

static int property_get_balloon_inhibited(sd_bus *bus, const char *path, const char *interface,
                                          const char *property, sd_bus_message *reply, void *userdata,
                                          sd_bus_error *error) {
        Broker *b = userdata;
        return sd_bus_message_append(reply, "b", b->balloon_inhibitors > 0);
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("CreateContainer",
                                SD_BUS_ARGS("a{sv}", options),
                                SD_BUS_RESULT("o", container),
                                method_create_container,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenConnection",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("h", connection),
                                method_open_connection,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Backend", "s", property_get_backend, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("BalloonInhibited", "b", property_get_balloon_inhibited, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BalloonInhibitors", "u", NULL, offsetof(Broker, balloon_inhibitors),
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END,
};

int manager_dbus_register_on(Broker *b, sd_bus *bus) {
        int r;

        r = sd_bus_add_object_vtable(bus, NULL, BROKER_OBJECT_PATH, BROKER_MANAGER_INTERFACE, manager_vtable, b);
        if (r < 0)
                return r;
        return sd_bus_add_object_manager(bus, NULL, BROKER_OBJECT_PATH);
}


int manager_dbus_emit_balloon_changed(Broker *b, bool flipped) {
        if (!b->bus)
                return 0;
        return sd_bus_emit_properties_changed(b->bus, BROKER_OBJECT_PATH, BROKER_MANAGER_INTERFACE,
                                              "BalloonInhibitors", flipped ? "BalloonInhibited" : NULL, NULL);
}
