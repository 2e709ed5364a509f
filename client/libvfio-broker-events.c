/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Signals reach a VMM when the handle's bus connection is processed: the event-loop integration, and
 * the balloon callbacks on the Manager's and a container's PropertiesChanged. */

#include <errno.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "libvfio-broker-private.h"
#include "macro.h"

_public_ int vfio_broker_attach_event(vfio_broker *b, sd_event *event, int priority) {
        if (!b)
                return -EINVAL;
        return sd_bus_attach_event(b->bus, event, priority);
}

_public_ int vfio_broker_get_fd(vfio_broker *b) {
        return b ? sd_bus_get_fd(b->bus) : -EINVAL;
}

_public_ int vfio_broker_get_events(vfio_broker *b) {
        return b ? sd_bus_get_events(b->bus) : -EINVAL;
}

_public_ int vfio_broker_get_timeout(vfio_broker *b, uint64_t *usec) {
        return b ? sd_bus_get_timeout(b->bus, usec) : -EINVAL;
}

_public_ int vfio_broker_process(vfio_broker *b) {
        return b ? sd_bus_process(b->bus, NULL) : -EINVAL;
}

static int on_manager_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        vfio_broker *b = userdata;
        vfio_broker_status s = {};
        const char *iface;

        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, MANAGER_IFACE) != 0)
                return 0;
        /* Read both values as they are now: a signal may carry only one of them. */
        vfio_broker_ref(b);
        if (vfio_broker_get_status(b, &s) >= 0 && b->balloon_handler)
                b->balloon_handler(b, s.balloon_inhibited, s.balloon_inhibitors, b->balloon_userdata);
        vfio_broker_status_clear(&s);
        vfio_broker_unref(b);
        return 0;
}

_public_ int vfio_broker_watch_balloon(vfio_broker *b, vfio_broker_balloon_handler handler, void *userdata) {
        int r;

        if (!b)
                return -EINVAL;
        b->balloon_slot = sd_bus_slot_unref(b->balloon_slot);
        b->balloon_handler = handler;
        b->balloon_userdata = userdata;
        if (!handler)
                return 0;
        r = sd_bus_match_signal(b->bus, &b->balloon_slot, BUS_NAME, ROOT_PATH, "org.freedesktop.DBus.Properties",
                                "PropertiesChanged", on_manager_changed, b);
        return r < 0 ? client_fail_errno(b, r, "Cannot subscribe to PropertiesChanged") : 0;
}

static int on_container_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        vfio_broker_container *c = userdata;
        const char *iface, *name;
        int inhibited;

        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, CONTAINER_IFACE) != 0)
                return 0;
        if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                if (sd_bus_message_read(m, "s", &name) < 0)
                        return 0;
                if (strcmp(name, "BalloonInhibited") == 0 && sd_bus_message_read(m, "v", "b", &inhibited) >= 0) {
                        if (c->balloon_handler)
                                c->balloon_handler(c, inhibited, c->balloon_userdata);
                } else if (sd_bus_message_skip(m, "v") < 0)
                        return 0;
                if (sd_bus_message_exit_container(m) < 0)
                        return 0;
        }
        return 0;
}

_public_ int vfio_broker_container_watch_balloon(vfio_broker_container *c, vfio_broker_container_balloon_handler handler,
                                                 void *userdata) {
        int r;

        if (!c)
                return -EINVAL;
        c->balloon_slot = sd_bus_slot_unref(c->balloon_slot);
        c->balloon_handler = handler;
        c->balloon_userdata = userdata;
        if (!handler)
                return 0;
        r = sd_bus_match_signal(c->broker->bus, &c->balloon_slot, BUS_NAME, c->path,
                                "org.freedesktop.DBus.Properties", "PropertiesChanged", on_container_changed, c);
        return r < 0 ? client_fail_errno(c->broker, r, "Cannot subscribe to PropertiesChanged") : 0;
}
