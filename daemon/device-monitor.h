/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Follows the host's devices (udev), so that Group objects come and go, and their Devices and Viable
 * change, as the administrator binds and unbinds drivers. No polling: the kernel announces every
 * change that matters as a uevent. */

#include "broker.h"

typedef struct DeviceMonitor DeviceMonitor;

/* Starts watching on the broker's event loop; the groups are re-read once right away, so nothing that
 * changed before the monitor listened is missed. */
int device_monitor_start(Broker *b, DeviceMonitor **ret);
DeviceMonitor *device_monitor_free(DeviceMonitor *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(DeviceMonitor *, device_monitor_free);
