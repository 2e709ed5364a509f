/* SPDX-License-Identifier: LGPL-2.1-or-later */
#ifndef VFIO_BROKER_GLIB_H
#define VFIO_BROKER_GLIB_H

/* libvfio-broker-glib: runs a vfio_broker connection from a GLib main context, so a GLib-based VMM
 * gets balloon callbacks from its own main loop. Kept apart so VMMs without GLib do not link it. */

#include <glib.h>

#include <vfio-broker/vfio-broker.h>

G_BEGIN_DECLS

/* The broker's errors as a GError domain, for GDBus clients (a gdbus-codegen proxy generated from
 * dbus-interfaces/, GDBusProxy, g_dbus_connection_call()): once the domain is registered, a reply
 * org.vfiobroker.Broker1.Error.Overlap arrives as VFIO_BROKER_ERROR / VFIO_BROKER_ERROR_OVERLAP
 * instead of G_IO_ERROR / G_IO_ERROR_DBUS_ERROR, and a GError of the domain returned from a GDBus
 * method handler goes out under the D-Bus name. The domain is registered (with
 * g_dbus_error_register_error_domain()) the first time vfio_broker_error_quark() runs, which any use
 * of VFIO_BROKER_ERROR does: use it once before the first call. InvalidArgs, AccessDenied and
 * NotSupported come as GLib's own G_DBUS_ERROR_INVALID_ARGS, G_DBUS_ERROR_ACCESS_DENIED and
 * G_DBUS_ERROR_NOT_SUPPORTED. g_dbus_error_strip_remote_error() leaves the broker's message. */
#define VFIO_BROKER_ERROR (vfio_broker_error_quark())
GQuark vfio_broker_error_quark(void);

/* One code per org.vfiobroker.Broker1.Error.<Name>, in the order of org.vfiobroker.Broker1(5). */
typedef enum VfioBrokerError {
        VFIO_BROKER_ERROR_NO_SUCH_GROUP,        /* org.vfiobroker.Broker1.Error.NoSuchGroup */
        VFIO_BROKER_ERROR_NO_SUCH_DEVICE,       /* NoSuchDevice */
        VFIO_BROKER_ERROR_NOT_VIABLE,           /* NotViable */
        VFIO_BROKER_ERROR_BUSY,                 /* Busy */
        VFIO_BROKER_ERROR_NO_GROUPS,            /* NoGroups */
        VFIO_BROKER_ERROR_OVERLAP,              /* Overlap */
        VFIO_BROKER_ERROR_WOULD_SPLIT,          /* WouldSplit */
        VFIO_BROKER_ERROR_OUT_OF_RANGE,         /* OutOfRange */
        VFIO_BROKER_ERROR_UNALIGNED,            /* Unaligned */
        VFIO_BROKER_ERROR_NOT_MAPPED,           /* NotMapped */
        VFIO_BROKER_ERROR_BAD_MEMORY,           /* BadMemory */
        VFIO_BROKER_ERROR_QUOTA_EXCEEDED,       /* QuotaExceeded */
        VFIO_BROKER_ERROR_KERNEL,               /* Kernel */
} VfioBrokerError;

/* A GSource that processes the connection; it holds a reference to b. */
GSource *vfio_broker_glib_source_new(vfio_broker *b);

/* Creates the source and attaches it to context (NULL: the default context). Returns its id. */
guint vfio_broker_glib_attach(vfio_broker *b, GMainContext *context);

G_END_DECLS

#endif
