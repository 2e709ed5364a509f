/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "container.h"
#include "container-dbus.h"
#include "group.h"
#include "group-dbus.h"
#include "log.h"
#include "manager-dbus.h"
#include "peer.h"
#include "polkit.h"
#include "quota.h"
#include "state.h"

int broker_new(sd_event *event, Backend *backend, BrokerConfig *config, Broker **ret) {
        _cleanup_(broker_freep) Broker *b = NULL;

        assert(backend);
        assert(config);
        assert(ret);

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;

        b->event = event ? sd_event_ref(event) : NULL;
        b->backend = backend;
        b->config = config;
        b->next_container_id = 1;
        b->notify_fd = -EBADF;

        *ret = TAKE_PTR(b);
        return 0;
}

Broker *broker_free(Broker *b) {
        if (!b)
                return NULL;

        /* Containers first: they release groups, pins and memory. */
        while (b->containers)
                container_dbus_close(b->containers);

        polkit_queries_free(b);
        peer_free_all(b);
        quota_free_all(b);

        for (size_t i = 0; i < b->n_groups; i++)
                group_free(b->groups[i]);
        free(b->groups);

        if (b->bus) {
                sd_bus_flush_close_unref(b->bus);
                b->bus = NULL;
        }
        backend_free(b->backend);
        broker_config_free(b->config);
        free(b->state_dir);
        safe_close(b->notify_fd);
        sd_event_unref(b->event);
        free(b);
        return NULL;
}

static int group_compare(const void *a, const void *b) {
        const Group *x = *(Group * const *) a, *y = *(Group * const *) b;
        return x->id < y->id ? -1 : x->id > y->id;
}

Group *broker_find_group(Broker *b, unsigned id) {
        size_t lo = 0, hi = b->n_groups;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (b->groups[mid]->id == id)
                        return b->groups[mid];
                if (b->groups[mid]->id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return NULL;
}

Group *broker_find_group_of_device(Broker *b, const char *device) {
        for (size_t i = 0; i < b->n_groups; i++)
                if (group_has_device(b->groups[i], device))
                        return b->groups[i];
        return NULL;
}

Container *broker_find_container(Broker *b, uint64_t id) {
        for (Container *c = b->containers; c; c = c->next)
                if (c->id == id)
                        return c;
        return NULL;
}

int broker_refresh_groups(Broker *b) {
        BackendGroupInfo *infos = NULL;
        size_t n_infos = 0;
        int r;

        assert(b);

        r = b->backend->ops->list_groups(b->backend, &infos, &n_infos);
        if (r < 0)
                return log_error_errno(r, "Failed to list VFIO groups: %m");

        /* Add groups that appeared; refresh the ones we know. */
        for (size_t i = 0; i < n_infos; i++) {
                Group *g = broker_find_group(b, infos[i].id);
                if (g) {
                        (void) group_refresh(g);
                        continue;
                }

                Group **a = realloc(b->groups, (b->n_groups + 1) * sizeof(Group *));
                if (!a) {
                        r = -ENOMEM;
                        goto finish;
                }
                b->groups = a;
                r = group_new(b, &infos[i], &g);
                if (r < 0)
                        goto finish;
                b->groups[b->n_groups++] = g;
                qsort(b->groups, b->n_groups, sizeof(Group *), group_compare);
                log_debug("VFIO group %u appeared.", g->id);
                (void) group_dbus_emit_added(g);
        }

        /* Drop groups that vanished, unless a container still holds them: the container keeps its
         * group fd, and the object must stay as long as Groups names it. */
        for (size_t i = 0; i < b->n_groups;) {
                Group *g = b->groups[i];
                bool present = false;

                for (size_t j = 0; j < n_infos && !present; j++)
                        present = infos[j].id == g->id;
                if (present || g->container) {
                        i++;
                        continue;
                }
                log_debug("VFIO group %u disappeared.", g->id);
                (void) group_dbus_emit_removed(g);
                group_free(g);
                memmove(b->groups + i, b->groups + i + 1, (b->n_groups - i - 1) * sizeof(Group *));
                b->n_groups--;
        }
        r = 0;

finish:
        backend_group_info_free_many(infos, n_infos);
        return r;
}

void broker_balloon_inhibitors_changed(Broker *b, int delta) {
        bool was = b->balloon_inhibitors > 0;

        assert(delta >= 0 || (unsigned) -delta <= b->balloon_inhibitors);

        if (delta == 0)
                return;
        b->balloon_inhibitors += delta;
        (void) manager_dbus_emit_balloon_changed(b, was != (b->balloon_inhibitors > 0));
}

int broker_connect_bus(Broker *b) {
        int r;

        assert(b);
        assert(!b->bus);

        /* sd_bus_open_system() honours $DBUS_SYSTEM_BUS_ADDRESS. */
        r = sd_bus_open_system(&b->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the system bus: %m");

        r = manager_dbus_register(b);
        if (r >= 0)
                r = group_dbus_register(b);
        if (r >= 0)
                r = container_dbus_register(b);
        if (r < 0)
                return log_error_errno(r, "Failed to register objects: %m");

        r = sd_bus_attach_event(b->bus, b->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        /* Losing the bus means losing track of every owner: exit, and let systemd restart us. */
        r = sd_bus_set_exit_on_disconnect(b->bus, true);
        if (r < 0)
                return log_error_errno(r, "Failed to set exit-on-disconnect: %m");

        /* Containers a previous instance left behind come back before anybody can call us. */
        r = state_restore(b);
        if (r < 0)
                return r;

        r = sd_bus_request_name(b->bus, BROKER_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to acquire the bus name " BROKER_BUS_NAME
                                       " (is another broker running, or is the bus policy missing?): %m");
        return 0;
}

bool broker_name_has_owner(Broker *b, const char *name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int has = 0;

        if (!b->bus || !name ||
            sd_bus_call_method(b->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "NameHasOwner", NULL, &reply, "s", name) < 0 ||
            sd_bus_message_read(reply, "b", &has) < 0)
                return false;
        return has;
}
