/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <string.h>

#include "bus-error.h"

int bus_error_from_broker(sd_bus_error *error, int r, const BrokerError *e) {
        assert(r < 0);

        if (broker_error_is_set(e)) {
                sd_bus_error_set(error, broker_error_code_to_dbus_name(e->code), e->message);
                return r;
        }

        if (r == -ENOMEM)
                return r; /* sd-bus answers org.freedesktop.DBus.Error.NoMemory */

        sd_bus_error_setf(error, broker_error_code_to_dbus_name(BROKER_ERROR_KERNEL),
                          "Unexpected error: %s (%s)", strerrorname_np(-r) ?: "unknown errno", strerror(-r));
        return r;
}
