/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include "broker.h"
#include "container.h"

int container_dbus_register(Broker *b);
int container_dbus_register_on(Broker *b, sd_bus *bus);

/* Starts tracking the owner (the sender of m) and announces the object. */
int container_dbus_attach(Container *c, sd_bus_message *m);

/* Starts tracking owner (a unique name, e.g. of a container restored after a restart). */
int container_dbus_track(Container *c, const char *owner);
void container_dbus_untrack(Container *c);

/* At most this many distinct owning connections: each costs the daemon one match rule on the bus,
 * and dbus-daemon's system bus allows 512 per connection; a failing match would cost the daemon its
 * bus connection. */
#define OWNERS_MAX 384

/* Close(): announce removal, then free everything (container_free()). */
void container_dbus_close(Container *c);

int container_dbus_emit_changed(Container *c, ContainerProperty mask);

/* Only the owner may act on a container; anybody else needs the manage action. extra: a further polkit
 * check, or NULL. 1: go ahead; 0: the reply comes when polkit answers; < 0: refused. */
typedef struct PolkitCheck PolkitCheck;
int container_verify_caller(Container *c, sd_bus_message *m, const PolkitCheck *extra, sd_bus_error *error);
