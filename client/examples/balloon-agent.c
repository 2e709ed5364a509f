/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A balloon agent in GLib/GDBus: follows the Manager's BalloonInhibited (and, with --container, one
 * container's) and reports every change; with --exec it runs a command with the new state, which is
 * how a QEMU- or libvirt-side agent would stop and resume inflating (see vfio-brokerd(8)).
 *
 *   balloon-agent [--container=PATH] [--exec=COMMAND] [--count=N]
 *
 * COMMAND runs through /bin/sh with VFIO_BROKER_BALLOON_INHIBITED=1|0 and
 * VFIO_BROKER_OBJECT=<path> in its environment. --count exits after N changes (for tests).
 *
 * A followed container's DiscardableRanges are printed as they change: the ranges its VMM maps granule
 * by granule and discards before freeing memory, where an agent may reclaim while the rest of guest
 * RAM stays off limits. */

#include <gio/gio.h>
#include <stdio.h>
#include <stdlib.h>

#define BUS_NAME "org.vfiobroker.Broker1"
#define ROOT "/org/vfiobroker/Broker1"

static gchar *arg_container;
static gchar *arg_exec;
static gint arg_count = -1;
static GMainLoop *loop;

static void report(const gchar *path, gboolean inhibited, gboolean initial) {
        printf("%s %s BalloonInhibited=%s\n", initial ? "state" : "changed", path, inhibited ? "true" : "false");
        fflush(stdout);
        if (arg_exec && !initial) {
                gchar **envp = g_environ_setenv(g_get_environ(), "VFIO_BROKER_BALLOON_INHIBITED", inhibited ? "1" : "0", TRUE);
                envp = g_environ_setenv(envp, "VFIO_BROKER_OBJECT", path, TRUE);
                const gchar *argv[] = { "/bin/sh", "-c", arg_exec, NULL };
                GError *error = NULL;
                if (!g_spawn_sync(NULL, (gchar **) argv, envp, G_SPAWN_DEFAULT, NULL, NULL, NULL, NULL, NULL, &error)) {
                        g_printerr("balloon-agent: %s\n", error->message);
                        g_error_free(error);
                }
                g_strfreev(envp);
        }
        if (!initial && arg_count > 0 && --arg_count == 0)
                g_main_loop_quit(loop);
}

static void report_discardable(const gchar *path, GVariant *ranges) {
        GVariantIter iter;
        guint64 first, last, granule;
        gboolean any = FALSE;

        printf("discardable %s", path);
        g_variant_iter_init(&iter, ranges);
        while (g_variant_iter_next(&iter, "(ttt)", &first, &last, &granule)) {
                printf(" [0x%" G_GINT64_MODIFIER "x, 0x%" G_GINT64_MODIFIER "x]/0x%" G_GINT64_MODIFIER "x", first,
                       last, granule);
                any = TRUE;
        }
        printf("%s\n", any ? "" : " none");
        fflush(stdout);
}

static void on_properties_changed(GDBusProxy *proxy, GVariant *changed, GStrv invalidated, gpointer user_data) {
        GVariant *ranges;
        gboolean inhibited;

        if (g_variant_lookup(changed, "BalloonInhibited", "b", &inhibited))
                report(g_dbus_proxy_get_object_path(proxy), inhibited, FALSE);
        ranges = g_variant_lookup_value(changed, "DiscardableRanges", G_VARIANT_TYPE("a(ttt)"));
        if (ranges) {
                report_discardable(g_dbus_proxy_get_object_path(proxy), ranges);
                g_variant_unref(ranges);
        }
}

static GDBusProxy *follow(const gchar *path, const gchar *iface) {
        GError *error = NULL;
        GDBusProxy *proxy = g_dbus_proxy_new_for_bus_sync(G_BUS_TYPE_SYSTEM, G_DBUS_PROXY_FLAGS_DO_NOT_AUTO_START, NULL,
                                                          BUS_NAME, path, iface, NULL, &error);
        GVariant *v;

        if (!proxy) {
                g_printerr("balloon-agent: cannot follow %s: %s\n", path, error->message);
                g_error_free(error);
                return NULL;
        }
        v = g_dbus_proxy_get_cached_property(proxy, "BalloonInhibited");
        if (!v) {
                g_printerr("balloon-agent: %s has no BalloonInhibited (is vfio-brokerd running?)\n", path);
                g_object_unref(proxy);
                return NULL;
        }
        report(path, g_variant_get_boolean(v), TRUE);
        g_variant_unref(v);
        v = g_dbus_proxy_get_cached_property(proxy, "DiscardableRanges");
        if (v) {
                report_discardable(path, v);
                g_variant_unref(v);
        }
        g_signal_connect(proxy, "g-properties-changed", G_CALLBACK(on_properties_changed), NULL);
        return proxy;
}

int main(int argc, char *argv[]) {
        GOptionEntry entries[] = {
                { "container", 0, 0, G_OPTION_ARG_STRING, &arg_container, "Also follow this container", "PATH" },
                { "exec", 0, 0, G_OPTION_ARG_STRING, &arg_exec, "Run COMMAND on every change", "COMMAND" },
                { "count", 0, 0, G_OPTION_ARG_INT, &arg_count, "Exit after N changes", "N" },
                { NULL }
        };
        GOptionContext *context = g_option_context_new("- follow vfio-brokerd's balloon inhibition");
        GError *error = NULL;
        GDBusProxy *manager, *container = NULL;

        g_option_context_add_main_entries(context, entries, NULL);
        if (!g_option_context_parse(context, &argc, &argv, &error)) {
                g_printerr("balloon-agent: %s\n", error->message);
                return 2;
        }
        g_option_context_free(context);

        loop = g_main_loop_new(NULL, FALSE);
        manager = follow(ROOT, BUS_NAME ".Manager");
        if (!manager)
                return 1;
        if (arg_container && !(container = follow(arg_container, BUS_NAME ".Container")))
                return 1;
        fflush(stdout);
        g_main_loop_run(loop);

        g_clear_object(&container);
        g_object_unref(manager);
        g_main_loop_unref(loop);
        return 0;
}
