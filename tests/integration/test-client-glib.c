/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libvfio-broker driven from a GMainLoop through vfio-broker-glib: balloon callbacks arrive from the
 * main loop while another connection attaches and detaches a group. */

#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vfio-broker/vfio-broker-glib.h>

static GMainLoop *loop;
static vfio_broker_container *actor_container;
static int step;
static int failures;

static void on_balloon(vfio_broker *b, bool inhibited, uint32_t inhibitors, void *userdata) {
        printf("# callback from the main loop: inhibited=%d inhibitors=%u\n", inhibited, inhibitors);
        if (step == 0) {
                if (!inhibited || inhibitors != 1)
                        failures++;
                step = 1;
                printf("%s 1 - attach seen from the GMainLoop\n", inhibited ? "ok" : "not ok");
                if (vfio_broker_container_detach_group(actor_container, 2) < 0)
                        failures++;
        } else if (step == 1) {
                printf("%s 2 - detach seen from the GMainLoop\n", !inhibited && inhibitors == 0 ? "ok" : "not ok");
                if (inhibited || inhibitors != 0)
                        failures++;
                step = 2;
                g_main_loop_quit(loop);
        }
}

static gboolean start(gpointer userdata) {
        vfio_broker *actor = userdata;
        if (vfio_broker_container_new(actor, "glib-actor", &actor_container) < 0 ||
            vfio_broker_container_attach_group(actor_container, 2) < 0)
                failures++;
        return G_SOURCE_REMOVE;
}

static gboolean timeout(gpointer userdata) {
        printf("not ok - timed out at step %d\n", step);
        failures++;
        g_main_loop_quit(loop);
        return G_SOURCE_REMOVE;
}

int main(void) {
        vfio_broker *watcher, *actor;

        if (vfio_broker_open(&watcher) < 0 || vfio_broker_open(&actor) < 0)
                return 1;
        loop = g_main_loop_new(NULL, FALSE);
        if (vfio_broker_watch_balloon(watcher, on_balloon, NULL) < 0 || vfio_broker_glib_attach(watcher, NULL) == 0)
                return 1;
        /* vfio_broker_watch_balloon() has installed the match synchronously; act from the loop. */
        g_idle_add(start, actor);
        g_timeout_add_seconds(20, timeout, NULL);
        g_main_loop_run(loop);

        if (actor_container)
                vfio_broker_container_close(actor_container);
        vfio_broker_unref(actor);
        vfio_broker_unref(watcher);
        g_main_loop_unref(loop);
        printf("1..2\n");
        return failures ? 1 : 0;
}
