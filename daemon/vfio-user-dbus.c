/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdlib.h>
#include <string.h>

#include "bus-error.h"
#include "caller.h"
#include "container.h"
#include "log.h"
#include "vfio-user-dbus.h"
#include "vfio-user-server.h"

static int emit_devices_changed(Container *c) {
        if (!c->broker->bus)
                return 0;
        return sd_bus_emit_properties_changed(c->broker->bus, c->path, BROKER_CONTAINER_INTERFACE,
                                              "VfioUserDevices", NULL);
}

static int read_device(sd_bus_message *m, const char **ret, sd_bus_error *error) {
        int r;

        r = sd_bus_message_read(m, "s", ret);
        if (r < 0)
                return r;
        if ((*ret)[0] == 0 || strchr(*ret, '/'))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "\"%s\" is not a device name; use the form of the Group objects' Devices "
                                         "property, e.g. 0000:01:00.0.", *ret);
        return 1;
}

int vfio_user_dbus_method_serve(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        const char *device;
        int fd, r;

        r = read_device(m, &device, error);
        if (r <= 0)
                return r;
        /* Borrowed from the message; the server duplicates what it keeps. */
        r = sd_bus_message_read(m, "h", &fd);
        if (r < 0)
                return r;

        r = caller_verify_owner(c->broker, m, c->path, c->owner, c->uid, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = vfio_user_server_new(c, device, fd, NULL, &e);
        if (r < 0)
                return bus_error_from_broker(error, r, &e);
        (void) emit_devices_changed(c);
        return sd_bus_reply_method_return(m, NULL);
}

int vfio_user_dbus_method_stop(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        VfioUserServer *s;
        const char *device;
        int r;

        r = read_device(m, &device, error);
        if (r <= 0)
                return r;

        r = caller_verify_owner(c->broker, m, c->path, c->owner, c->uid, NULL, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        s = vfio_user_server_find(c, device);
        if (!s)
                return sd_bus_error_setf(error, broker_error_code_to_dbus_name(BROKER_ERROR_NO_SUCH_DEVICE),
                                         "Device %s is not served over vfio-user by this container.", device);
        vfio_user_server_free(s);
        (void) emit_devices_changed(c);
        return sd_bus_reply_method_return(m, NULL);
}

int vfio_user_dbus_property_devices(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Container *c = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        for (VfioUserServer *s = c->vfio_user_servers; s; s = vfio_user_server_next(s)) {
                r = sd_bus_message_append(reply, "s", vfio_user_server_device(s));
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}
