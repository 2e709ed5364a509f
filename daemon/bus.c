/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The daemon on the system bus: the connection, the objects of every face registered on it, and the
 * one observer through which the faces hear what the logic changed. */

#include <assert.h>

#include "bus.h"
#include "container-dbus.h"
#include "event-util.h"
#include "group-dbus.h"
#include "log.h"
#include "owner-watch.h"
#include "manager-dbus.h"
#include "peer.h"
#include "polkit.h"
#include "state.h"

static void on_container_added(void *userdata, Container *c) {
        Broker *b = userdata;

        if (b->bus)
                (void) sd_bus_emit_object_added(b->bus, c->path);
}

/* Mappings, MappedBytes and DmaAvailable change with every Map and Unmap. A VMM that maps granule by
 * granule would make dbus-daemon route a PropertiesChanged per call, as much work for it as the call
 * itself; so these counters go out at most once per BUS_COUNTERS_USEC and container: the first change
 * at once, later ones at the end of the window with the values of then. Every other property (the
 * balloon state, groups, ranges) goes at once, and takes held counters with it. */
#define BUS_COUNTERS_USEC (10 * 1000)

static int on_counters_due(sd_event_source *source, uint64_t usec, void *userdata) {
        Container *c = userdata;
        unsigned held = c->bus_counters_held;

        c->bus_counters_held = 0;
        c->bus_counters_sent = usec;
        (void) container_dbus_emit_changed(c, held);
        return 0;
}

static void on_container_changed(void *userdata, Container *c, unsigned mask) {
        Broker *b = userdata;
        uint64_t now;

        mask &= _CONTAINER_PROPERTY_ALL;
        if (mask == 0)
                return;
        if (!b->event || sd_event_now(b->event, CLOCK_MONOTONIC, &now) < 0)
                return (void) container_dbus_emit_changed(c, mask);

        if ((mask & ~CONTAINER_CHANGE_MAPPINGS) == 0 && now < c->bus_counters_sent + BUS_COUNTERS_USEC) {
                int r = 0;

                if (c->bus_counters_held == 0)
                        r = event_arm_oneshot(b->event, &c->bus_counters_timer,
                                              c->bus_counters_sent + BUS_COUNTERS_USEC, on_counters_due, c);
                if (r >= 0) {
                        c->bus_counters_held |= mask;
                        return;
                }
        }

        mask |= c->bus_counters_held;
        c->bus_counters_held = 0;
        if (c->bus_counters_timer)
                (void) sd_event_source_set_enabled(c->bus_counters_timer, SD_EVENT_OFF);
        if (mask & CONTAINER_CHANGE_MAPPINGS)
                c->bus_counters_sent = now;
        (void) container_dbus_emit_changed(c, mask);
}

static void on_container_removed(void *userdata, Container *c) {
        Broker *b = userdata;

        c->bus_counters_timer = sd_event_source_disable_unref(c->bus_counters_timer);
        if (b->bus)
                (void) sd_bus_emit_object_removed(b->bus, c->path);
        owner_watch_untrack(c);
}

static void on_group_added(void *userdata, Group *g) {
        (void) group_dbus_emit_added(g);
}

static void on_group_changed(void *userdata, Group *g) {
        (void) group_dbus_emit_changed(g);
}

static void on_group_removed(void *userdata, Group *g) {
        (void) group_dbus_emit_removed(g);
}

static void on_balloon_changed(void *userdata, bool flipped) {
        (void) manager_dbus_emit_balloon_changed(userdata, flipped);
}

static void on_done(void *userdata) {
        Broker *b = userdata;

        b->polkit = polkit_registry_free(b->polkit);
        peer_free_all(b);
        if (b->bus) {
                sd_bus_flush_close_unref(b->bus);
                b->bus = NULL;
        }
}

static const BrokerObserver bus_observer = {
        /* One PropertiesChanged per object and loop iteration, as systemd's bus_unit_send_change_signal();
         * object additions, removals and the balloon state go out at once, before the reply. */
        .coalesce = true,
        .container_added = on_container_added,
        .container_changed = on_container_changed,
        .container_removed = on_container_removed,
        .group_added = on_group_added,
        .group_changed = on_group_changed,
        .group_removed = on_group_removed,
        .balloon_changed = on_balloon_changed,
        .done = on_done,
};

int bus_add_fallback_objects(sd_bus *bus, const char *prefix, const char *interface, const sd_bus_vtable *vtable,
                             sd_bus_object_find_t find, sd_bus_node_enumerator_t enumerator, void *userdata) {
        int r;

        r = sd_bus_add_fallback_vtable(bus, NULL, prefix, interface, vtable, find, userdata);
        if (r < 0)
                return r;
        return sd_bus_add_node_enumerator(bus, NULL, prefix, enumerator, userdata);
}

int bus_connect(Broker *b) {
        int r;

        assert(b);
        assert(!b->bus);

        /* sd_bus_open_system() honours $DBUS_SYSTEM_BUS_ADDRESS. */
        r = sd_bus_open_system(&b->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the system bus: %m");

        r = polkit_registry_new(b->bus, b->event, &b->polkit);
        if (r < 0)
                return log_error_errno(r, "Failed to set up polkit queries: %m");

        r = broker_observe(b, &bus_observer, b);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the broker: %m");

        r = manager_dbus_register_on(b, b->bus);
        if (r >= 0)
                r = group_dbus_register_on(b, b->bus);
        if (r >= 0)
                r = container_dbus_register_on(b, b->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to register objects: %m");

        r = sd_bus_attach_event(b->bus, b->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        /* Losing the bus means losing track of every owner: exit, and let systemd restart us. */
        r = sd_bus_set_exit_on_disconnect(b->bus, true);
        if (r < 0)
                return log_error_errno(r, "Failed to set exit-on-disconnect: %m");

        /* Containers a previous instance left behind come back before anybody can call us. */
        r = state_restore(b);
        if (r < 0)
                return r;

        r = sd_bus_request_name(b->bus, BROKER_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to acquire the bus name " BROKER_BUS_NAME
                                       " (is another broker running, or is the bus policy missing?): %m");
        return 0;
}

bool bus_name_has_owner(Broker *b, const char *name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int has = 0;

        if (!b->bus || !name ||
            sd_bus_call_method(b->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "NameHasOwner", NULL, &reply, "s", name) < 0 ||
            sd_bus_message_read(reply, "b", &has) < 0)
                return false;
        return has;
}
