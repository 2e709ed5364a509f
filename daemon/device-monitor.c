/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Which uevents change what the broker shows (Linux 6.1, drivers/base/dd.c, drivers/vfio/):
 *
 *  - "bind"/"unbind" on a PCI device: a driver was bound to or unbound from it. A group is viable
 *    only while no device in it is bound to a driver that owns DMA (VFIO_GROUP_FLAGS_VIABLE), and
 *    binding the first device of a group to vfio-pci creates /dev/vfio/N, unbinding the last one
 *    removes it.
 *  - "add"/"remove" in the "vfio" class: /dev/vfio/N itself appeared or went (also for non-PCI VFIO
 *    drivers).
 *  - "add"/"remove" of a PCI device: hotplug changes a group's device list
 *    (/sys/kernel/iommu_groups/N/devices).
 *
 * We listen to udev's rebroadcast, not to the kernel's netlink group: udev sends an event after its
 * rules ran, so /dev/vfio/N has its final owner and mode when we hear of it. Each event only asks for
 * a re-read of all groups (broker_refresh_groups(), which reports what changed), once per event loop
 * iteration however many events came together: binding a multi-function device sends several. */

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <systemd/sd-device.h>

#include "device-monitor.h"
#include "log.h"

struct DeviceMonitor {
        Broker *broker;
        sd_device_monitor *monitor;
        sd_event_source *refresh; /* deferred re-read of the groups */
};

static int on_refresh(sd_event_source *s, void *userdata) {
        DeviceMonitor *m = userdata;

        (void) broker_refresh_groups(m->broker); /* logs its own failure; the next event retries */
        return sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

static int refresh_schedule(DeviceMonitor *m) {
        return sd_event_source_set_enabled(m->refresh, SD_EVENT_ONESHOT);
}

static bool event_matters(sd_device *d) {
        const char *subsystem = NULL;
        sd_device_action_t action;

        if (sd_device_get_action(d, &action) < 0 || sd_device_get_subsystem(d, &subsystem) < 0)
                return false;
        if (action == SD_DEVICE_ADD || action == SD_DEVICE_REMOVE)
                return true;
        return strcmp(subsystem, "pci") == 0 && (action == SD_DEVICE_BIND || action == SD_DEVICE_UNBIND);
}

static int on_device(sd_device_monitor *monitor, sd_device *d, void *userdata) {
        DeviceMonitor *m = userdata;
        const char *sysname = NULL, *action = NULL;

        if (!event_matters(d))
                return 0;
        (void) sd_device_get_sysname(d, &sysname);
        (void) sd_device_get_property_value(d, "ACTION", &action);
        log_debug("uevent %s of %s: re-reading the VFIO groups.", action ?: "?", sysname ?: "?");
        return refresh_schedule(m);
}

int device_monitor_start(Broker *b, DeviceMonitor **ret) {
        _cleanup_(device_monitor_freep) DeviceMonitor *m = NULL;
        int r;

        assert(b);
        assert(b->event);
        assert(ret);

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->broker = b;

        r = sd_event_add_defer(b->event, &m->refresh, on_refresh, m);
        if (r < 0)
                return r;

        /* Without udev nothing rebroadcasts the kernel's events: say so, the broker still works but
         * shows the groups as they were at startup. */
        if (access("/run/udev/control", F_OK) < 0)
                log_warning("udev is not running (no /run/udev/control): VFIO groups that appear, go or "
                            "change after startup will not be noticed.");

        r = sd_device_monitor_new(&m->monitor);
        if (r < 0)
                return r;
        (void) sd_device_monitor_set_description(m->monitor, "vfio-groups");
        r = sd_device_monitor_filter_add_match_subsystem_devtype(m->monitor, "pci", NULL);
        if (r >= 0)
                r = sd_device_monitor_filter_add_match_subsystem_devtype(m->monitor, "vfio", NULL);
        if (r < 0)
                return r;
        r = sd_device_monitor_attach_event(m->monitor, b->event);
        if (r < 0)
                return r;
        r = sd_device_monitor_start(m->monitor, on_device, m);
        if (r < 0)
                return r;

        /* Whatever changed between the first listing and now. */
        r = refresh_schedule(m);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

DeviceMonitor *device_monitor_free(DeviceMonitor *m) {
        if (!m)
                return NULL;
        sd_device_monitor_unref(m->monitor);
        sd_event_source_disable_unref(m->refresh);
        free(m);
        return NULL;
}
