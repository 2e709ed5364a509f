/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <string.h>

#include "broker-wire.h"

static const struct {
        const char *dbus_name;
        int error;
} error_table[_BROKER_ERROR_MAX] = {
        [BROKER_ERROR_NONE]           = { NULL,                                        0          },
        [BROKER_ERROR_INVALID_ARGS]   = { "org.freedesktop.DBus.Error.InvalidArgs",     EINVAL     },
        [BROKER_ERROR_ACCESS_DENIED]  = { "org.freedesktop.DBus.Error.AccessDenied",    EACCES     },
        [BROKER_ERROR_NO_SUCH_GROUP]  = { BROKER_ERROR_PREFIX "NoSuchGroup",            ENOENT     },
        [BROKER_ERROR_NO_SUCH_DEVICE] = { BROKER_ERROR_PREFIX "NoSuchDevice",           ENODEV     },
        [BROKER_ERROR_NOT_VIABLE]     = { BROKER_ERROR_PREFIX "NotViable",              EPERM      },
        [BROKER_ERROR_BUSY]           = { BROKER_ERROR_PREFIX "Busy",                   EBUSY      },
        [BROKER_ERROR_NO_GROUPS]      = { BROKER_ERROR_PREFIX "NoGroups",               ENXIO      },
        [BROKER_ERROR_OVERLAP]        = { BROKER_ERROR_PREFIX "Overlap",                EEXIST     },
        [BROKER_ERROR_WOULD_SPLIT]    = { BROKER_ERROR_PREFIX "WouldSplit",             EXDEV      },
        [BROKER_ERROR_OUT_OF_RANGE]   = { BROKER_ERROR_PREFIX "OutOfRange",             ERANGE     },
        [BROKER_ERROR_UNALIGNED]      = { BROKER_ERROR_PREFIX "Unaligned",              EFAULT     },
        [BROKER_ERROR_NOT_MAPPED]     = { BROKER_ERROR_PREFIX "NotMapped",              ESRCH      },
        [BROKER_ERROR_BAD_MEMORY]     = { BROKER_ERROR_PREFIX "BadMemory",              EBADF      },
        [BROKER_ERROR_QUOTA_EXCEEDED] = { BROKER_ERROR_PREFIX "QuotaExceeded",          EDQUOT     },
        [BROKER_ERROR_KERNEL]         = { BROKER_ERROR_PREFIX "Kernel",                 EIO        },
        [BROKER_ERROR_NOT_SUPPORTED]  = { "org.freedesktop.DBus.Error.NotSupported",    EOPNOTSUPP },
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
