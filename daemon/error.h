/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Errors of the broker's logic, independent of D-Bus.
 *
 * Logic functions return a negative errno and, when given a BrokerError, fill in which SPEC error it
 * is and a message a VMM author can act on. Backends return the kernel's errno only (backend.h); the
 * logic words those in container-error.c. Only the D-Bus edge (bus-error.c) turns a BrokerError into
 * an sd_bus_error, so the logic can be unit-tested and reused without a bus. */

#include <stdbool.h>

#include "broker-wire.h"
#include "macro.h"

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
