/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vfio-brokerctl: what every command reports the same way: the broker's errors as a message and an
 * exit code, and JSON documents. */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "vfio-brokerctl-private.h"

/* The bus answers for a name nobody owns: not activatable (ServiceUnknown, NameHasNoOwner), or activation
 * was tried and failed (Spawn.*, or systemd's errors when the bus activates through systemd). */
static bool broker_not_running(const char *name, int r) {
        return strstr(name, "ServiceUnknown") || strstr(name, "NameHasNoOwner") ||
               strncmp(name, "org.freedesktop.DBus.Error.Spawn.", 33) == 0 ||
               strncmp(name, "org.freedesktop.systemd1.", 25) == 0 || (!*name && r == -ECONNREFUSED);
}

int exit_for(vfio_broker *b, int r, const char *what) {
        const char *name = vfio_broker_error_name(b);
        const char *message = vfio_broker_error_message(b);

        if (broker_not_running(name, r)) {
                fprintf(stderr, "vfio-brokerctl: vfio-brokerd is not running (nobody owns org.vfiobroker.Broker1 on "
                        "the system bus).\nStart it with: systemctl start vfio-brokerd\n");
                /* Why activation failed, when the bus tried: the administrator's next clue. */
                if (!strstr(name, "ServiceUnknown") && !strstr(name, "NameHasNoOwner") && message && *message)
                        fprintf(stderr, "(the bus said: %s)\n", message);
                return EXIT_UNAVAILABLE;
        }
        fprintf(stderr, "vfio-brokerctl: %s: %s\n", what, message && *message ? message : strerror(-r));
        if (strstr(name, "UnknownObject"))
                return EXIT_NOT_FOUND;
        if (strstr(name, "AccessDenied"))
                return EXIT_DENIED;
        if (strstr(name, "InvalidArgs"))
                return EXIT_USAGE;
        return EXIT_ERROR;
}

void print_json(json_object *o) {
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
}

json_object *json_u64(uint64_t v) {
        /* JSON numbers are int64 in json-c; every value here fits (bytes, counts, bitmaps < 2^63). */
        return json_object_new_int64(v > INT64_MAX ? INT64_MAX : (int64_t) v);
}
