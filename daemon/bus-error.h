/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>

#include "error.h"

/* The one place where logic errors become D-Bus errors. r is what the logic returned (negative);
 * e what it recorded. An error the logic did not describe becomes Kernel with the errno's name, so a
 * VMM never sees a bare "Input/output error". Returns a negative errno, as sd-bus handlers want. */
int bus_error_from_broker(sd_bus_error *error, int r, const BrokerError *e);
