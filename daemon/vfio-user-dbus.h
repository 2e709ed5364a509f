/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The Container interface's vfio-user members (the handlers sit in container-dbus.c's vtable):
 * ServeVfioUser(s device, h listener), StopVfioUser(s device), VfioUserDevices (as). */

#include <systemd/sd-bus.h>

int vfio_user_dbus_method_serve(sd_bus_message *m, void *userdata, sd_bus_error *error);
int vfio_user_dbus_method_stop(sd_bus_message *m, void *userdata, sd_bus_error *error);
int vfio_user_dbus_property_devices(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error);
