/* SPDX-License-Identifier: LGPL-2.1-or-later */
#ifndef VFIO_BROKER_GLIB_H
#define VFIO_BROKER_GLIB_H

/* libvfio-broker-glib: runs a vfio_broker connection from a GLib main context, so a GLib-based VMM
 * gets balloon callbacks from its own main loop. Kept apart so VMMs without GLib do not link it. */

#include <glib.h>

#include <vfio-broker/vfio-broker.h>

G_BEGIN_DECLS

/* A GSource that processes the connection; it holds a reference to b. */
GSource *vfio_broker_glib_source_new(vfio_broker *b);

/* Creates the source and attaches it to context (NULL: the default context). Returns its id. */
guint vfio_broker_glib_attach(vfio_broker *b, GMainContext *context);

G_END_DECLS

#endif
