/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The vfio-user face: one device of a container served on a listening AF_UNIX stream socket that the
 * container's owner bound, so that an unmodified VMM (QEMU's vfio-user-pci, cloud-hypervisor's
 * --user-device) uses the device through the broker.
 *
 * Like the D-Bus faces it parses and validates a whole message first (vfio-user-message.c), then calls
 * the container's logic (DMA_MAP with an fd is container_map(), exactly as D-Bus Map) or the backend's
 * device (backend-device.h), then replies. One client at a time, whose SO_PEERCRED uid must be the
 * container's or 0. All I/O is non-blocking with one message in and one reply out per client at most,
 * so the daemon never waits for a client. A malformed message disconnects that client with a logged
 * reason; on disconnect its mappings and interrupt eventfds are dropped and the device stays served
 * for the next client, as the protocol asks. */

#include <stddef.h>

#include "container.h"

typedef struct VfioUserServer VfioUserServer;

/* Starts serving device (of a group attached to c) on listen_fd (borrowed; the server keeps a copy,
 * switched to non-blocking). Errors: NoSuchDevice, Busy (already served, or the backend refuses),
 * BadMemory (not a listening AF_UNIX stream socket). */
int vfio_user_server_new(Container *c, const char *device, int listen_fd, VfioUserServer **ret, BrokerError *e);

/* Stops serving: the client is disconnected, its mappings dropped, the device released. When the
 * container goes (Close, its owner leaving, a hand-over), its servers stop by themselves: the face
 * observes container removal (BrokerObserver). */
VfioUserServer *vfio_user_server_free(VfioUserServer *s);

VfioUserServer *vfio_user_server_find(Container *c, const char *device);

const char *vfio_user_server_device(const VfioUserServer *s);
VfioUserServer *vfio_user_server_next(const VfioUserServer *s);
