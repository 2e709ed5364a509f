/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>

#include "broker.h"

/* Connects to the system bus ($DBUS_SYSTEM_BUS_ADDRESS honoured), registers the objects, subscribes
 * the D-Bus faces to the broker's changes, restores what a previous instance left and requests the
 * name. */
int bus_connect(Broker *b);

/* The objects below prefix (one per container, one per group): a fallback vtable and its enumerator. */
int bus_add_fallback_objects(sd_bus *bus, const char *prefix, const char *interface, const sd_bus_vtable *vtable,
                             sd_bus_object_find_t find, sd_bus_node_enumerator_t enumerator, void *userdata);

/* Whether a unique name is still on the bus (a synchronous call: not for the hot path). */
bool bus_name_has_owner(Broker *b, const char *name);
