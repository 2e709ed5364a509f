/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Runs in the test VM against vfio-brokerd --backend=vfio with udev running: the broker follows the
 * host. An edu is unbound from vfio-pci and bound again behind the broker's back, as an administrator
 * does; a client that watches the bus hears each change, a property read afterwards returns the new
 * state (what a GDBus proxy caches is what the signals said), and the group works again afterwards.
 *
 * Linux 6.1: the vfio group (and /dev/vfio/N) exists while at least one device of the IOMMU group is
 * bound to a vfio driver (vfio_device_remove_group()), so unbinding the only device of a group removes
 * the group and binding it again creates it anew: InterfacesRemoved, then InterfacesAdded with the
 * new Devices and Viable. A device leaving a group that stays (function 1 of the multi-function edu
 * removed with /sys/bus/pci/devices/D/remove, then found again by a rescan) changes its Devices:
 * PropertiesChanged. Prints "VMTAP: ok|not ok - name" lines. */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <dirent.h>
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
        bool changed_viable;      /* from the last PropertiesChanged of path */
        char changed_devices[256];
        sd_bus_slot *slots[3];    /* the matches, which point here: gone with the Watch */
} Watch;

static void watch_done(Watch *w) {
        for (size_t i = 0; i < ELEMENTSOF(w->slots); i++)
                w->slots[i] = sd_bus_slot_unref(w->slots[i]);
}

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
        const char *interface;

        if (sd_bus_message_read(m, "s", &interface) < 0 || strcmp(interface, GROUP_INTERFACE) != 0)
                return 0;
        if (read_group_properties(m, &w->changed_viable, w->changed_devices, sizeof(w->changed_devices)) >= 0)
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

/* The last VFIO group with exactly n_devices devices (sorted names in devices), or -1. */
static int find_group(size_t n_devices, char devices[][32]) {
        unsigned ids[8];
        char first[8][32];
        int n = vm_find_groups(ids, first, 8), found = -1;

        for (int i = 0; i < n; i++) {
                char path[64];
                size_t k = 0;
                struct dirent *de;
                snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%u/devices", ids[i]);
                DIR *d = opendir(path);
                if (!d)
                        continue;
                while ((de = readdir(d)))
                        if (de->d_name[0] != '.')
                                k++;
                closedir(d);
                if (k == n_devices)
                        found = i;
        }
        if (found < 0)
                return -1;
        /* vm_find_groups() gives the first device; the second of a pair has function 1. */
        snprintf(devices[0], 32, "%s", first[found]);
        if (n_devices > 1) {
                snprintf(devices[1], 32, "%s", first[found]);
                devices[1][strlen(devices[1]) - 1] = '1';
        }
        return (int) ids[found];
}

static int watch(Watch *w, const char *path) {
        int r;

        w->path = path;
        r = sd_bus_match_signal(bus, &w->slots[0], BUS_NAME, ROOT, "org.freedesktop.DBus.ObjectManager",
                                "InterfacesAdded", on_interfaces_added, w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &w->slots[1], BUS_NAME, ROOT, "org.freedesktop.DBus.ObjectManager",
                                        "InterfacesRemoved", on_interfaces_removed, w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &w->slots[2], BUS_NAME, path, "org.freedesktop.DBus.Properties",
                                        "PropertiesChanged", on_properties_changed, w);
        return r;
}

/* Processes the bus until a PropertiesChanged says Devices is want, or the time is up. */
static bool wait_for_devices(Watch *w, const char *want) {
        while (strcmp(w->changed_devices, want) != 0)
                if (!wait_for(&w->n_changed, w->n_changed))
                        return false;
        return true;
}

/* Function 1 of the multi-function edu leaves its group and comes back; the group stays. */
static void test_device_leaves_group(void) {
        char devices[2][32], gpath[64], path[128], both[80], devices_now[256];
        _cleanup_free_ char *container = NULL;
        _cleanup_close_ int ram = -EBADF, fd = -EBADF;
        _cleanup_(watch_done) Watch w = {};
        bool viable = false;
        int id, r;

        id = find_group(2, devices);
        tap(id >= 0, "hotplug: the multi-function edu's two functions share a VFIO group (%d)", id);
        if (id < 0)
                return;
        snprintf(gpath, sizeof(gpath), ROOT "/group/%d", id);
        snprintf(both, sizeof(both), "%s,%s", devices[0], devices[1]);
        r = watch(&w, gpath);
        r = r >= 0 ? get_group(gpath, &viable, devices_now, sizeof(devices_now), NULL) : r;
        tap(r >= 0 && viable && strcmp(devices_now, both) == 0, "hotplug: group %d has Devices [%s] (read: %s)",
            id, both, devices_now);

        /* Unbound from vfio-pci, the function stays in the group (driverless devices keep it viable),
         * then goes from the PCI bus. */
        r = write_sysfs("/sys/bus/pci/drivers/vfio-pci/unbind", devices[1]);
        snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/remove", devices[1]);
        r = r >= 0 ? write_sysfs(path, "1") : r;
        tap(r >= 0, "hotplug: unbind %s and remove it from the PCI bus (%s)", devices[1], strerror(r < 0 ? -r : 0));
        bool heard = wait_for_devices(&w, devices[0]);
        tap(heard && w.changed_viable && w.n_removed == 0,
            "hotplug: the broker signals PropertiesChanged for %s: Devices [%s], Viable true (heard %s, %s)",
            gpath, devices[0], w.changed_devices, w.changed_viable ? "true" : "false");
        r = get_group(gpath, &viable, devices_now, sizeof(devices_now), NULL);
        tap(r >= 0 && viable && strcmp(devices_now, devices[0]) == 0,
            "hotplug: a property read after the removal returns Devices [%s] (read: %s)", devices[0], devices_now);

        /* A rescan finds it again, in the same group (the functions say they are multi-function and
         * have no ACS, so Linux groups them together), without a driver; then bind it to vfio-pci. */
        r = write_sysfs("/sys/bus/pci/rescan", "1");
        char link[256] = "", want[32];
        snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", devices[1]);
        snprintf(want, sizeof(want), "/%d", id);
        ssize_t k = readlink(path, link, sizeof(link) - 1);
        link[k > 0 ? k : 0] = 0;
        tap(r >= 0 && k > 0 && strlen(link) > strlen(want) && strcmp(link + strlen(link) - strlen(want), want) == 0,
            "hotplug: a PCI rescan puts %s back into IOMMU group %d (%s)", devices[1], id, link);
        heard = r >= 0 && wait_for_devices(&w, both);
        tap(heard && w.changed_viable && w.n_removed == 0 && w.n_added == 0,
            "hotplug: after a PCI rescan the broker signals Devices [%s] again (heard %s)", both, w.changed_devices);
        r = get_group(gpath, &viable, devices_now, sizeof(devices_now), NULL);
        tap(r >= 0 && viable && strcmp(devices_now, both) == 0,
            "hotplug: a property read after the rescan returns Devices [%s] (read: %s)", both, devices_now);
        snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver_override", devices[1]);
        r = write_sysfs(path, "vfio-pci");
        r = r >= 0 ? write_sysfs("/sys/bus/pci/drivers_probe", devices[1]) : r;
        tap(r >= 0, "hotplug: bind %s to vfio-pci again (%s)", devices[1], strerror(r < 0 ? -r : 0));

        /* The function that came back works. */
        container = vm_create_container(bus, "hotplug-function");
        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        bool ok = container && ram >= 0 && ftruncate(ram, 4 * MiB) == 0 &&
                  !vm_call(bus, container, CONTAINER, "AttachGroup", NULL, "u", (uint32_t) id) &&
                  !vm_call(bus, container, CONTAINER, "Map", NULL, "htttu", ram, UINT64_C(0), 4 * MiB, 1 * MiB,
                           UINT32_C(3));
        fd = ok ? vm_open_device(bus, container, devices[1]) : -1;
        Edu edu;
        vm_fill(ram, 0x2000, 0x3c, 1024);
        ok = fd >= 0 && edu_open(&edu, fd) == 0 && edu_dma_to_device(&edu, 1 * MiB + 0x2000, 0, 1024) == 0 &&
             edu_dma_from_device(&edu, 0, 1 * MiB + 0x20000, 1024) == 0;
        tap(ok && vm_check(ram, 0x20000, 0x3c, 1024),
            "hotplug: %s, back in group %d, DMAs through the broker's mapping", devices[1], id);
        fd = safe_close(fd);
        tap(container && !vm_call(bus, container, CONTAINER, "Close", NULL, ""), "hotplug: Close");
}

/* The only device of a group unbound from vfio-pci and bound again: the group goes and comes. */
static void test_unbind_rebind(void) {
        char devices[1][32], gpath[64], dev_path[64], devices_now[256];
        _cleanup_free_ char *container = NULL;
        _cleanup_close_ int ram = -EBADF, fd = -EBADF;
        _cleanup_(watch_done) Watch w = {};
        bool viable = false;
        int r;

        /* The last single-device group: the other tests are done with it. */
        int found = find_group(1, devices);
        if (found < 0) {
                tap(false, "hotplug: an edu alone in its VFIO group to unbind (none found)");
                return;
        }
        unsigned id = (unsigned) found;
        const char *bdf = devices[0];
        snprintf(gpath, sizeof(gpath), ROOT "/group/%u", id);
        snprintf(dev_path, sizeof(dev_path), "/dev/vfio/%u", id);

        r = watch(&w, gpath);
        tap(r >= 0, "hotplug: watch the broker's signals for group %u (%s)", id, bdf);
        if (r < 0)
                return;

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
}

int main(void) {
        if (sd_bus_open_system(&bus) < 0) {
                tap(false, "hotplug: connect to the system bus");
                return 1;
        }
        test_unbind_rebind();
        test_device_leaves_group();
        sd_bus_flush_close_unref(bus);
        return vm_failures ? 1 : 0;
}
