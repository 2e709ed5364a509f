/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>

#include "broker.h"

int manager_dbus_register_on(Broker *b, sd_bus *bus);
/* BalloonInhibitors changed; BalloonInhibited too when flipped. */
int manager_dbus_emit_balloon_changed(Broker *b, bool flipped);
