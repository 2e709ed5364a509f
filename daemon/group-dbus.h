/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include "broker.h"

int group_dbus_register_on(Broker *b, sd_bus *bus);
int group_dbus_emit_added(Group *g);
int group_dbus_emit_removed(Group *g);
/* Devices, Viable and Container. */
int group_dbus_emit_changed(Group *g);
