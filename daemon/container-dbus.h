/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include "broker.h"
#include "container.h"

int container_dbus_register_on(Broker *b, sd_bus *bus);

int container_dbus_emit_changed(Container *c, ContainerProperty mask);
