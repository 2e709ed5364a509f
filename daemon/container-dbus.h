/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include "broker.h"
#include "container.h"

int container_dbus_register(Broker *b);
int container_dbus_register_on(Broker *b, sd_bus *bus);

/* Starts tracking the owner (the sender of m): when it leaves the bus, its containers are closed. */
int container_dbus_attach(Container *c, sd_bus_message *m);

/* Starts tracking owner (a unique name, e.g. of a container restored after a restart). */
int container_dbus_track(Container *c, const char *owner);
void container_dbus_untrack(Container *c);

/* At most this many distinct owning connections: each costs the daemon one match rule on the bus,
 * and dbus-daemon's system bus allows 512 per connection; a failing match would cost the daemon its
 * bus connection. */
#define OWNERS_MAX 384

int container_dbus_emit_changed(Container *c, ContainerProperty mask);
