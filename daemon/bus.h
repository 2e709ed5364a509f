/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>

#include "broker.h"

/* Connects to the system bus ($DBUS_SYSTEM_BUS_ADDRESS honoured), registers the objects, subscribes
 * the D-Bus faces to the broker's changes, restores what a previous instance left and requests the
 * name. */
int bus_connect(Broker *b);

/* Whether a unique name is still on the bus (a synchronous call: not for the hot path). */
bool bus_name_has_owner(Broker *b, const char *name);
