/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Errors of the broker's logic, independent of D-Bus.
 *
 * Logic and backend functions return a negative errno and, when given a BrokerError, fill in which
 * SPEC error it is and a message a VMM author can act on. Only the D-Bus edge (bus-error.c) turns it
 * into an sd_bus_error, so the logic can be unit-tested and reused without a bus. */

#include <stdbool.h>

#include "macro.h"

typedef enum BrokerErrorCode {
        BROKER_ERROR_NONE = 0,
        BROKER_ERROR_INVALID_ARGS,      /* org.freedesktop.DBus.Error.InvalidArgs */
        BROKER_ERROR_ACCESS_DENIED,     /* org.freedesktop.DBus.Error.AccessDenied */
        BROKER_ERROR_NO_SUCH_GROUP,
        BROKER_ERROR_NO_SUCH_DEVICE,
        BROKER_ERROR_NOT_VIABLE,
        BROKER_ERROR_BUSY,
        BROKER_ERROR_NO_GROUPS,
        BROKER_ERROR_OVERLAP,
        BROKER_ERROR_WOULD_SPLIT,
        BROKER_ERROR_OUT_OF_RANGE,
        BROKER_ERROR_UNALIGNED,
        BROKER_ERROR_NOT_MAPPED,
        BROKER_ERROR_BAD_MEMORY,
        BROKER_ERROR_QUOTA_EXCEEDED,
        BROKER_ERROR_KERNEL,
        BROKER_ERROR_NOT_SUPPORTED,     /* org.freedesktop.DBus.Error.NotSupported: the hardware cannot */
        _BROKER_ERROR_MAX,
} BrokerErrorCode;

typedef struct BrokerError {
        BrokerErrorCode code;
        char message[320];
} BrokerError;

#define BROKER_ERROR_INIT ((BrokerError) { .code = BROKER_ERROR_NONE })

/* Records code and message (if e is non-NULL and holds no error yet: the first, most specific error
 * wins) and returns the negative errno that stands for this code (see broker_error_to_errno()). */
int broker_error_set(BrokerError *e, BrokerErrorCode code, const char *format, ...) _printf_(3, 4);

/* For an unexpected errno from the kernel: code Kernel, message "<text>: <ERRNONAME> (<strerror>)".
 * Returns error (which must be negative). */
int broker_error_set_errno(BrokerError *e, int error, const char *format, ...) _printf_(3, 4);

static inline bool broker_error_is_set(const BrokerError *e) {
        return e && e->code != BROKER_ERROR_NONE;
}

/* "org.vfiobroker.Broker1.Error.Busy", "org.freedesktop.DBus.Error.InvalidArgs", ... */
const char *broker_error_code_to_dbus_name(BrokerErrorCode code);
BrokerErrorCode broker_error_code_from_dbus_name(const char *name);

/* The errno that the logic returns alongside each code; the client library uses the same table so a
 * VMM sees one errno per SPEC error whichever side detected it. */
int broker_error_code_to_errno(BrokerErrorCode code);

/* "EBUSY" etc., or NULL when unknown. */
const char *errno_to_name(int error);
