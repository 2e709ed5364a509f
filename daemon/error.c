/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

#define ERROR_PREFIX "org.vfiobroker.Broker1.Error."

static const struct {
        const char *dbus_name;
        int error;
} error_table[_BROKER_ERROR_MAX] = {
        [BROKER_ERROR_NONE]           = { NULL,                                     0          },
        [BROKER_ERROR_INVALID_ARGS]   = { "org.freedesktop.DBus.Error.InvalidArgs",  EINVAL     },
        [BROKER_ERROR_ACCESS_DENIED]  = { "org.freedesktop.DBus.Error.AccessDenied", EACCES     },
        [BROKER_ERROR_NO_SUCH_GROUP]  = { ERROR_PREFIX "NoSuchGroup",                ENOENT     },
        [BROKER_ERROR_NO_SUCH_DEVICE] = { ERROR_PREFIX "NoSuchDevice",               ENODEV     },
        [BROKER_ERROR_NOT_VIABLE]     = { ERROR_PREFIX "NotViable",                  EPERM      },
        [BROKER_ERROR_BUSY]           = { ERROR_PREFIX "Busy",                       EBUSY      },
        [BROKER_ERROR_NO_GROUPS]      = { ERROR_PREFIX "NoGroups",                   ENXIO      },
        [BROKER_ERROR_OVERLAP]        = { ERROR_PREFIX "Overlap",                    EEXIST     },
        [BROKER_ERROR_WOULD_SPLIT]    = { ERROR_PREFIX "WouldSplit",                 EXDEV      },
        [BROKER_ERROR_OUT_OF_RANGE]   = { ERROR_PREFIX "OutOfRange",                 ERANGE     },
        [BROKER_ERROR_UNALIGNED]      = { ERROR_PREFIX "Unaligned",                  EFAULT     },
        [BROKER_ERROR_NOT_MAPPED]     = { ERROR_PREFIX "NotMapped",                  ESRCH      },
        [BROKER_ERROR_BAD_MEMORY]     = { ERROR_PREFIX "BadMemory",                  EBADF      },
        [BROKER_ERROR_QUOTA_EXCEEDED] = { ERROR_PREFIX "QuotaExceeded",              EDQUOT     },
        [BROKER_ERROR_KERNEL]         = { ERROR_PREFIX "Kernel",                     EIO        },
        [BROKER_ERROR_NOT_SUPPORTED]  = { "org.freedesktop.DBus.Error.NotSupported", EOPNOTSUPP },
};

const char *broker_error_code_to_dbus_name(BrokerErrorCode code) {
        assert(code >= 0 && code < _BROKER_ERROR_MAX);
        return error_table[code].dbus_name;
}

BrokerErrorCode broker_error_code_from_dbus_name(const char *name) {
        if (!name)
                return BROKER_ERROR_NONE;
        for (BrokerErrorCode c = 1; c < _BROKER_ERROR_MAX; c++)
                if (strcmp(error_table[c].dbus_name, name) == 0)
                        return c;
        return BROKER_ERROR_NONE;
}

int broker_error_code_to_errno(BrokerErrorCode code) {
        assert(code >= 0 && code < _BROKER_ERROR_MAX);
        return error_table[code].error;
}

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
        return -error_table[code].error;
}

int broker_error_set_errno(BrokerError *e, int error, const char *format, ...) {
        char text[200];
        va_list ap;

        assert(error < 0);

        va_start(ap, format);
        (void) vsnprintf(text, sizeof(text), format, ap);
        va_end(ap);

        if (e && e->code == BROKER_ERROR_NONE) {
                const char *name = errno_to_name(-error);
                e->code = BROKER_ERROR_KERNEL;
                (void) snprintf(e->message, sizeof(e->message), "%s: %s (%s)",
                                text, name ?: "unknown errno", strerror(-error));
        }
        return error;
}

const char *errno_to_name(int error) {
        static const struct { int error; const char *name; } names[] = {
#define N(x) { x, #x }
                N(EPERM), N(ENOENT), N(ESRCH), N(EINTR), N(EIO), N(ENXIO), N(E2BIG), N(EBADF),
                N(EAGAIN), N(ENOMEM), N(EACCES), N(EFAULT), N(EBUSY), N(EEXIST), N(EXDEV), N(ENODEV),
                N(ENOTDIR), N(EISDIR), N(EINVAL), N(ENFILE), N(EMFILE), N(ENOTTY), N(EFBIG), N(ENOSPC),
                N(ESPIPE), N(EROFS), N(ERANGE), N(ENOSYS), N(EOVERFLOW), N(EOPNOTSUPP), N(EDQUOT),
                N(ENOTCONN), N(ECONNRESET), N(ETIMEDOUT), N(ENOMSG), N(EPROTO), N(EBADMSG),
#undef N
        };
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (names[i].error == error)
                        return names[i].name;
        return NULL;
}
