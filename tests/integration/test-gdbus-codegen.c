/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A GLib client generated from the shipped XML alone, as a VMM author would make it: plain
 * gdbus-codegen (no --glib-min-required, so fds exist only where the XML says
 * org.gtk.GDBus.C.UnixFD), proxies for the three interfaces, and the broker's GError domain from
 * vfio-broker-glib. Against the daemon on the test bus: create a container, attach a group, Map a
 * memfd, open a device, read properties, get broker errors as VFIO_BROKER_ERROR codes, Close. */

#include <fcntl.h>
#include <gio/gio.h>
#include <gio/gunixfdlist.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vfio-broker/vfio-broker-glib.h>

#include "broker-wire.h"
#include "broker1-gdbus.h"

#define BUS_NAME "org.vfiobroker.Broker1"
#define MiB (G_GUINT64_CONSTANT(1) << 20)
#define IOVA G_GUINT64_CONSTANT(0x10000000)

static int n_tests, failures;

static void check(gboolean ok, const char *what, const GError *error) {
        n_tests++;
        if (!ok)
                failures++;
        printf("%s %d - %s\n", ok ? "ok" : "not ok", n_tests, what);
        if (error)
                printf("#   %s %d: %s\n", g_quark_to_string(error->domain), error->code, error->message);
}

/* Every org.vfiobroker.Broker1.Error.* name the daemon can send (the wire contract, common/broker-wire.c)
 * arrives in VFIO_BROKER_ERROR, and a GError of the domain goes out under that name. */
static void check_every_error_name(void) {
        unsigned n = 0, mapped = 0;

        for (BrokerErrorCode code = 1; code < _BROKER_ERROR_MAX; code++) {
                const char *name = broker_error_code_to_dbus_name(code);
                if (!g_str_has_prefix(name, "org.vfiobroker.Broker1.Error."))
                        continue;
                n++;
                g_autoptr(GError) e = g_dbus_error_new_for_dbus_error(name, "test");
                g_autoptr(GError) out = g_error_new_literal(VFIO_BROKER_ERROR, e->code, "test");
                g_autofree char *back = g_dbus_error_encode_gerror(out);
                if (e->domain == VFIO_BROKER_ERROR && g_strcmp0(back, name) == 0)
                        mapped++;
                else
                        printf("#   %s is not in VFIO_BROKER_ERROR\n", name);
        }
        check(n == 13 && mapped == n, "every broker error name has a VFIO_BROKER_ERROR code, both ways", NULL);
}

static Broker1Container *container_proxy(GDBusConnection *bus, const char *path) {
        g_autoptr(GError) error = NULL;
        Broker1Container *c = broker1_container_proxy_new_sync(bus, G_DBUS_PROXY_FLAGS_NONE, BUS_NAME, path, NULL, &error);
        if (!c)
                printf("# no proxy for %s: %s\n", path, error->message);
        return c;
}

int main(void) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GDBusConnection) bus = NULL;
        /* Plain gdbus-codegen declares no autoptr cleanups for its types. */
        Broker1Manager *manager = NULL;
        Broker1Group *group = NULL;
        Broker1Container *c = NULL, *fresh = NULL;
        g_autoptr(GUnixFDList) fds = NULL, out_fds = NULL;
        g_autoptr(GVariant) out_fd = NULL;
        g_autofree char *path = NULL;
        GVariantBuilder options;
        const char *const *devices;
        int ram, device_fd;
        gboolean ok;
        struct stat st;

        /* Registers the domain before the first reply can arrive. */
        (void) VFIO_BROKER_ERROR;

        check_every_error_name();

        bus = g_bus_get_sync(G_BUS_TYPE_SYSTEM, NULL, &error);
        if (!bus) {
                printf("Bail out! no system bus: %s\n", error->message);
                return 1;
        }
        manager = broker1_manager_proxy_new_sync(bus, G_DBUS_PROXY_FLAGS_NONE, BUS_NAME, "/org/vfiobroker/Broker1",
                                                 NULL, &error);
        if (!manager) {
                printf("Bail out! no Manager proxy: %s\n", error->message);
                return 1;
        }
        check(g_strcmp0(broker1_manager_get_backend(manager), "sim") == 0, "Manager.Backend reads sim", NULL);

        g_variant_builder_init(&options, G_VARIANT_TYPE_VARDICT);
        g_variant_builder_add(&options, "{sv}", "Label", g_variant_new_string("codegen"));
        ok = broker1_manager_call_create_container_sync(manager, g_variant_builder_end(&options), &path, NULL, &error);
        check(ok, "CreateContainer", error);
        if (!ok)
                return 1;
        c = container_proxy(bus, path);
        group = broker1_group_proxy_new_sync(bus, G_DBUS_PROXY_FLAGS_NONE, BUS_NAME, "/org/vfiobroker/Broker1/group/1",
                                             NULL, &error);
        if (!c || !group)
                return 1;

        ok = broker1_container_call_attach_group_sync(c, 1, NULL, &error);
        check(ok, "AttachGroup(1)", error);
        g_clear_error(&error);

        /* Map takes its fd through a GUnixFDList: the "h" is an index into it. */
        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 2 * MiB) < 0)
                return 1;
        fds = g_unix_fd_list_new_from_array(&ram, 1); /* takes ram */
        ok = broker1_container_call_map_sync(c, g_variant_new_handle(0), 0, MiB, IOVA, 3, fds, NULL, NULL, &error);
        check(ok, "Map a memfd passed in a GUnixFDList", error);
        g_clear_error(&error);

        devices = broker1_group_get_devices(group);
        check(devices && devices[0], "Group.Devices lists the devices", NULL);
        if (devices && devices[0]) {
                ok = broker1_container_call_open_device_sync(c, devices[0], NULL, &out_fd, &out_fds, NULL, &error);
                device_fd = ok ? g_unix_fd_list_get(out_fds, g_variant_get_handle(out_fd), NULL) : -1;
                check(device_fd >= 0 && fstat(device_fd, &st) == 0, "OpenDevice returns an fd in its GUnixFDList", error);
                g_clear_error(&error);
                if (device_fd >= 0)
                        close(device_fd);
        }

        /* A new proxy reads every property afresh (GetAll). */
        fresh = container_proxy(bus, path);
        if (!fresh)
                return 1;
        check(broker1_container_get_mappings(fresh) == 1 && broker1_container_get_mapped_bytes(fresh) == MiB,
              "Mappings and MappedBytes count the mapping", NULL);
        check(g_strcmp0(broker1_container_get_label(fresh), "codegen") == 0 && broker1_container_get_uid(fresh) == getuid(),
              "Label and UID", NULL);
        GVariant *groups = broker1_container_get_groups(fresh);
        check(groups && g_variant_n_children(groups) == 1, "Groups holds the attached group", NULL);
        check(broker1_container_get_balloon_inhibited(fresh), "BalloonInhibited", NULL);

        /* Broker errors arrive in their own domain, with the broker's message. */
        g_clear_object(&fds);
        fds = g_unix_fd_list_new();
        ram = memfd_create("guest-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, 2 * MiB) < 0 || g_unix_fd_list_append(fds, ram, NULL) < 0)
                return 1;
        close(ram);
        ok = broker1_container_call_map_sync(c, g_variant_new_handle(0), 0, MiB, IOVA, 3, fds, NULL, NULL, &error);
        check(!ok && g_error_matches(error, VFIO_BROKER_ERROR, VFIO_BROKER_ERROR_OVERLAP),
              "a second Map at the same IOVA fails with VFIO_BROKER_ERROR_OVERLAP", error);
        if (error) {
                g_autofree char *name = g_dbus_error_get_remote_error(error);
                check(g_strcmp0(name, "org.vfiobroker.Broker1.Error.Overlap") == 0 && g_dbus_error_strip_remote_error(error) &&
                      strstr(error->message, "overlaps") != NULL,
                      "the remote name and the broker's message are kept", error);
        }
        g_clear_error(&error);

        ok = broker1_container_call_attach_group_sync(c, 4242, NULL, &error);
        check(!ok && g_error_matches(error, VFIO_BROKER_ERROR, VFIO_BROKER_ERROR_NO_SUCH_GROUP),
              "AttachGroup(4242) fails with VFIO_BROKER_ERROR_NO_SUCH_GROUP", error);
        g_clear_error(&error);

        ok = broker1_container_call_unmap_sync(c, IOVA + 4096, 4096, NULL, &error);
        check(!ok && g_error_matches(error, VFIO_BROKER_ERROR, VFIO_BROKER_ERROR_WOULD_SPLIT),
              "an Unmap that cuts the mapping fails with VFIO_BROKER_ERROR_WOULD_SPLIT", error);
        g_clear_error(&error);

        ok = broker1_container_call_map_sync(c, g_variant_new_handle(0), 0, MiB, IOVA + 4 * MiB, 0, fds, NULL, NULL, &error);
        check(!ok && g_error_matches(error, G_DBUS_ERROR, G_DBUS_ERROR_INVALID_ARGS),
              "Map with flags 0 fails with G_DBUS_ERROR_INVALID_ARGS", error);
        g_clear_error(&error);

        ok = broker1_container_call_close_sync(c, NULL, &error);
        check(ok, "Close", error);
        g_clear_error(&error);
        ok = broker1_container_call_attach_group_sync(c, 1, NULL, &error);
        check(!ok && error && !g_error_matches(error, VFIO_BROKER_ERROR, VFIO_BROKER_ERROR_BUSY),
              "the closed container is gone", error);

        g_clear_object(&fresh);
        g_clear_object(&c);
        g_clear_object(&group);
        g_clear_object(&manager);
        printf("1..%d\n", n_tests);
        return failures ? 1 : 0;
}
