/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Runs in the test VM against vfio-brokerd --backend=vfio with udev running: the broker follows the
 * host. An edu is unbound from vfio-pci and bound again behind the broker's back, as an administrator
 * does; a client that watches the bus hears each change, a property read afterwards returns the new
 * state (what a GDBus proxy caches is what the signals said), and the group works again afterwards.
 *
 * Linux 6.1: the vfio group (and /dev/vfio/N) exists while at least one device of the IOMMU group is
 * bound to a vfio driver (vfio_device_remove_group()), so unbinding the only device of a group removes
 * the group and binding it again creates it anew: InterfacesRemoved, then InterfacesAdded with the
 * new Devices and Viable. Prints "VMTAP: ok|not ok - name" lines. */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <systemd/sd-bus.h>

#include "edu.h"
#include "vm-client.h"
#include "macro.h"

#define tap vm_tap
#define BUS_NAME "org.vfiobroker.Broker1"
#define ROOT "/org/vfiobroker/Broker1"
#define GROUP_INTERFACE BUS_NAME ".Group"
#define CONTAINER BUS_NAME ".Container"
#define MiB (UINT64_C(1) << 20)
#define WAIT_USEC (30 * UINT64_C(1000000)) /* TCG is slow; udev and the broker are not */

typedef struct Watch {
        const char *path;
        unsigned n_added, n_removed, n_changed;
        bool added_viable;        /* from the last InterfacesAdded of path */
        char added_devices[256];  /* its Devices, comma-separated */
} Watch;

static sd_bus *bus;

static int write_sysfs(const char *path, const char *value) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
        size_t n = strlen(value);

        if (fd < 0)
                return -errno;
        if (write(fd, value, n) != (ssize_t) n)
                return -errno;
        return 0;
}

/* The Group interface's properties from an a{sv}. */
static int read_group_properties(sd_bus_message *m, bool *viable, char *devices, size_t size) {
        int r;

        *devices = 0;
        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *name;
                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;
                if (strcmp(name, "Viable") == 0) {
                        int b;
                        r = sd_bus_message_read(m, "v", "b", &b);
                        *viable = b;
                } else if (strcmp(name, "Devices") == 0) {
                        const char *d;
                        r = sd_bus_message_enter_container(m, 'v', "as");
                        if (r >= 0)
                                r = sd_bus_message_enter_container(m, 'a', "s");
                        while (r >= 0 && (r = sd_bus_message_read(m, "s", &d)) > 0)
                                snprintf(devices + strlen(devices), size - strlen(devices), "%s%s",
                                         *devices ? "," : "", d);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else
                        r = sd_bus_message_skip(m, "v");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static int on_interfaces_added(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Watch *w = userdata;
        const char *path, *interface;
        int r;

        if (sd_bus_message_read(m, "o", &path) < 0 || strcmp(path, w->path) != 0)
                return 0;
        r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                r = sd_bus_message_read(m, "s", &interface);
                if (r >= 0 && strcmp(interface, GROUP_INTERFACE) == 0) {
                        r = read_group_properties(m, &w->added_viable, w->added_devices, sizeof(w->added_devices));
                        if (r >= 0)
                                w->n_added++;
                } else if (r >= 0)
                        r = sd_bus_message_skip(m, "a{sv}");
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        return 0;
}

static int on_interfaces_removed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Watch *w = userdata;
        const char *path;

        if (sd_bus_message_read(m, "o", &path) >= 0 && strcmp(path, w->path) == 0)
                w->n_removed++;
        return 0;
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Watch *w = userdata;
        w->n_changed++;
        return 0;
}

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

/* Processes the bus until *counter exceeds before or the time is up. */
static bool wait_for(const unsigned *counter, unsigned before) {
        uint64_t end = now_usec() + WAIT_USEC;

        while (*counter <= before) {
                uint64_t now = now_usec();
                if (now >= end)
                        return false;
                int r = sd_bus_process(bus, NULL);
                if (r < 0)
                        return false;
                if (r == 0 && sd_bus_wait(bus, end - now) < 0)
                        return false;
        }
        return true;
}

/* Devices and Viable as a property read now returns them (what a client that did not watch gets). */
static int get_group(const char *path, bool *viable, char *devices, size_t size, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call_method(bus, BUS_NAME, path, "org.freedesktop.DBus.Properties", "GetAll", error,
                               &reply, "s", GROUP_INTERFACE);
        if (r < 0)
                return r;
        return read_group_properties(reply, viable, devices, size);
}

static bool path_exists(const char *path) {
        return access(path, F_OK) == 0;
}

int main(void) {
        unsigned ids[4];
        char devices[4][32], gpath[64], dev_path[64], devices_now[256];
        _cleanup_free_ char *container = NULL;
        _cleanup_close_ int ram = -EBADF, fd = -EBADF;
        Watch w = {};
        bool viable = false;
        int n, r;

        if (sd_bus_open_system(&bus) < 0) {
                tap(false, "hotplug: connect to the system bus");
                return 1;
        }
        n = vm_find_groups(ids, devices, 4);
        if (n < 1) {
                tap(false, "hotplug: an edu in a VFIO group to unbind (none found)");
                return 1;
        }
        /* The last group: the other tests are done with it. */
        unsigned id = ids[n - 1];
        const char *bdf = devices[n - 1];
        snprintf(gpath, sizeof(gpath), ROOT "/group/%u", id);
        snprintf(dev_path, sizeof(dev_path), "/dev/vfio/%u", id);
        w.path = gpath;

        r = sd_bus_match_signal(bus, NULL, BUS_NAME, ROOT, "org.freedesktop.DBus.ObjectManager",
                                "InterfacesAdded", on_interfaces_added, &w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, BUS_NAME, ROOT, "org.freedesktop.DBus.ObjectManager",
                                        "InterfacesRemoved", on_interfaces_removed, &w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, BUS_NAME, gpath, "org.freedesktop.DBus.Properties",
                                        "PropertiesChanged", on_properties_changed, &w);
        tap(r >= 0, "hotplug: watch the broker's signals for group %u (%s)", id, bdf);
        if (r < 0)
                return 1;

        r = get_group(gpath, &viable, devices_now, sizeof(devices_now), NULL);
        tap(r >= 0 && viable && strcmp(devices_now, bdf) == 0,
            "hotplug: before: group %u is viable with Devices [%s] (read: %s)", id, bdf, devices_now);

        /* Unbind, behind the broker's back. */
        r = write_sysfs("/sys/bus/pci/drivers/vfio-pci/unbind", bdf);
        tap(r >= 0, "hotplug: unbind %s from vfio-pci (%s)", bdf, strerror(r < 0 ? -r : 0));
        bool heard = wait_for(&w.n_removed, 0);
        bool gone = !path_exists(dev_path);
        vm_tap(gone, "hotplug: Linux removes %s with the group's last vfio device", dev_path);
        tap(heard && w.n_added == 0, "hotplug: the broker signals InterfacesRemoved for %s", gpath);
        {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                r = get_group(gpath, &viable, devices_now, sizeof(devices_now), &error);
                tap(r < 0 && sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.UnknownObject"),
                    "hotplug: a property read after the unbind says the object is gone (%s)",
                    error.name ?: "it answered");
                sd_bus_error_free(&error);
        }
        container = vm_create_container(bus, "hotplug");
        {
                const char *e = container ? vm_call(bus, container, CONTAINER, "AttachGroup", NULL, "u", id) : "no container";
                tap(e && strstr(e, "NoSuchGroup"), "hotplug: AttachGroup of the unbound group is NoSuchGroup (%s)",
                    e ?: "it succeeded");
        }

        /* Bind again (driver_override still names vfio-pci, as /init set it). */
        r = write_sysfs("/sys/bus/pci/drivers_probe", bdf);
        tap(r >= 0 && path_exists(dev_path), "hotplug: bind %s to vfio-pci again: %s is back", bdf, dev_path);
        heard = wait_for(&w.n_added, 0);
        tap(heard && w.added_viable && strcmp(w.added_devices, bdf) == 0,
            "hotplug: the broker signals InterfacesAdded for %s with Viable true and Devices [%s] (got %s, %s)",
            gpath, bdf, w.added_viable ? "true" : "false", w.added_devices);
        r = get_group(gpath, &viable, devices_now, sizeof(devices_now), NULL);
        tap(r >= 0 && viable && strcmp(devices_now, bdf) == 0,
            "hotplug: a property read after the bind returns Viable true and Devices [%s] (read: %s)", bdf,
            devices_now);
        tap(w.n_removed == 1 && w.n_added == 1,
            "hotplug: one removal and one addition for one unbind and one bind (%u, %u)", w.n_removed, w.n_added);

        /* And the group works: attach, map, DMA both ways. */
        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        bool ok = container && ram >= 0 && ftruncate(ram, 4 * MiB) == 0 &&
                  !vm_call(bus, container, CONTAINER, "AttachGroup", NULL, "u", id) &&
                  !vm_call(bus, container, CONTAINER, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, 1 * MiB,
                           UINT32_C(3));
        tap(ok, "hotplug: AttachGroup and Map on the group after it came back");
        fd = ok ? vm_open_device(bus, container, bdf) : -1;
        Edu edu;
        vm_fill(ram, 0x1000, 0x6b, 1024);
        ok = fd >= 0 && edu_open(&edu, fd) == 0 && edu_dma_to_device(&edu, 1 * MiB + 0x1000, 0, 1024) == 0 &&
             edu_dma_from_device(&edu, 0, 1 * MiB + 0x10000, 1024) == 0;
        tap(ok && vm_check(ram, 0x10000, 0x6b, 1024), "hotplug: the rebound edu DMAs through the broker's mapping");
        fd = safe_close(fd);
        tap(container && !vm_call(bus, container, CONTAINER, "Close", NULL, ""), "hotplug: Close");

        sd_bus_flush_close_unref(bus);
        return vm_failures ? 1 : 0;
}
