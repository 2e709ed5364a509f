/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The wire contract of org.vfiobroker.Broker1 (SPEC.md): names, paths, interfaces, polkit actions,
 * error names with the errno each stands for, and limits. One place, used by the daemon, the client
 * library, vfio-brokerctl and the tests, so that no side can drift from the others. */

#include <stdbool.h>

#define BROKER_BUS_NAME            "org.vfiobroker.Broker1"
#define BROKER_OBJECT_PATH         "/org/vfiobroker/Broker1"
#define BROKER_GROUP_PREFIX        "/org/vfiobroker/Broker1/group"
#define BROKER_CONTAINER_PREFIX    "/org/vfiobroker/Broker1/container"
#define BROKER_MANAGER_INTERFACE   "org.vfiobroker.Broker1.Manager"
#define BROKER_GROUP_INTERFACE     "org.vfiobroker.Broker1.Group"
#define BROKER_CONTAINER_INTERFACE "org.vfiobroker.Broker1.Container"
#define BROKER_ERROR_PREFIX        "org.vfiobroker.Broker1.Error."

#define POLKIT_ACTION_ATTACH_GROUP "org.vfiobroker.broker1.attach-group"
#define POLKIT_ACTION_MANAGE       "org.vfiobroker.broker1.manage"

/* Map flags: the kernel's VFIO_DMA_MAP_FLAG_READ/WRITE. */
#define BROKER_MAP_READ  UINT32_C(1)
#define BROKER_MAP_WRITE UINT32_C(2)

/* Limits a client can run into. */
#define BROKER_LABEL_MAX       256   /* bytes of a container's Label */
#define BROKER_UPDATE_MAX      65536 /* unmaps, and maps, per Update */
/* Memory fds per Update. A D-Bus message and its fds travel in one sendmsg(), which passes at most
 * SCM_MAX_FD (253, include/net/scm.h) fds: the limit of the peer connection and of dbus-broker. No
 * transport carries more, so the daemon refuses more. */
#define BROKER_UPDATE_FDS_MAX  253
/* dbus-daemon's max_message_unix_fds, 16 unless the bus configuration raises it (Debian's
 * /usr/share/dbus-1/system.conf leaves it). dbus-daemon does not refuse a message with more: it
 * disconnects the sender, and with the connection the broker closes every container it owned. A
 * client cannot ask the bus for its limit, so on the bus it sends at most this many per message. */
#define BROKER_BUS_MESSAGE_FDS_MAX 16

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

/* "org.vfiobroker.Broker1.Error.Busy", "org.freedesktop.DBus.Error.InvalidArgs", ... */
const char *broker_error_code_to_dbus_name(BrokerErrorCode code);
BrokerErrorCode broker_error_code_from_dbus_name(const char *name);

/* The errno that stands for each code, on both sides: the daemon's logic returns it, the client
 * library returns it for the D-Bus error, so a VMM sees one errno per SPEC error whichever side
 * detected it. */
int broker_error_code_to_errno(BrokerErrorCode code);
