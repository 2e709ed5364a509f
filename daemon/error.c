/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

static void broker_error_vset(BrokerError *e, BrokerErrorCode code, const char *format, va_list ap) {
        if (!e || e->code != BROKER_ERROR_NONE)
                return;
        e->code = code;
        (void) vsnprintf(e->message, sizeof(e->message), format, ap);
}

int broker_error_set(BrokerError *e, BrokerErrorCode code, const char *format, ...) {
        va_list ap;

        assert(code > BROKER_ERROR_NONE && code < _BROKER_ERROR_MAX);
        assert(code != BROKER_ERROR_KERNEL); /* use broker_error_set_errno() */

        va_start(ap, format);
        broker_error_vset(e, code, format, ap);
        va_end(ap);
        return -broker_error_code_to_errno(code);
}

int broker_error_set_errno(BrokerError *e, int error, const char *format, ...) {
        char text[200];
        va_list ap;

        assert(error < 0);

        va_start(ap, format);
        (void) vsnprintf(text, sizeof(text), format, ap);
        va_end(ap);

        if (e && e->code == BROKER_ERROR_NONE) {
                const char *name = strerrorname_np(-error);
                e->code = BROKER_ERROR_KERNEL;
                (void) snprintf(e->message, sizeof(e->message), "%s: %s (%s)",
                                text, name ?: "unknown errno", strerror(-error));
        }
        return error;
}
