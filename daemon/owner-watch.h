/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>

#include "container.h"

/* At most this many distinct owning connections: each costs the daemon one match rule on the bus,
 * and dbus-daemon's system bus allows 512 per connection; a failing match would cost the daemon its
 * bus connection. */
#define OWNERS_MAX 384

/* A reference to the watch of owner (a unique name), created at the first: when owner leaves the bus,
 * its containers and peer connections are closed. *ret stays NULL without a bus (unit tests). */
int owner_watch_ref(Broker *b, const char *owner, OwnerWatch **ret);
void owner_watch_unref(Broker *b, OwnerWatch *w);

/* Starts tracking the owner of c (the caller of m): when it leaves the bus, its containers are closed.
 * -EUSERS beyond OWNERS_MAX owners. */
int owner_watch_track_caller(Container *c, sd_bus_message *m);
/* The same for a unique name (the owner of a container restored after a restart). */
int owner_watch_track(Container *c, const char *owner);
void owner_watch_untrack(Container *c);
