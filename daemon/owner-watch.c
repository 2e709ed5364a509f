/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A container lives as long as the bus connection that owns it: one sd_bus_track per owning
 * connection closes its containers (and its peer connections) when it leaves the bus. */

#include <stdlib.h>
#include <string.h>

#include "caller.h"
#include "log.h"
#include "owner-watch.h"
#include "peer.h"

/* One watch per owning connection, however many containers it owns: every sd_bus_track costs a
 * match rule on the bus, and dbus-daemon limits those per connection. */
struct OwnerWatch {
        OwnerWatch *next;
        Broker *broker;
        char *name;
        sd_bus_track *track;
        unsigned n_ref; /* containers and peer connections of this owner */
};

static OwnerWatch *owner_watch_free(OwnerWatch *w) {
        if (!w)
                return NULL;
        sd_bus_track_unref(w->track);
        free(w->name);
        free(w);
        return NULL;
}

static int owner_track_handler(sd_bus_track *track, void *userdata) {
        OwnerWatch *w = userdata;
        Broker *b = w->broker;
        _cleanup_free_ char *name = strdup(w->name);

        if (!name)
                return -ENOMEM;
        log_info("Owner %s disconnected; closing its containers and peer connections.", name);
        /* Closing the last container or peer connection frees w: walk the broker's lists, not w. */
        peer_close_all_of(b, name);
        for (Container *c = b->containers, *next; c; c = next) {
                next = c->next;
                if (strcmp(c->owner, name) == 0)
                        container_close(c);
        }
        return 0;
}

int owner_watch_ref(Broker *b, const char *owner, OwnerWatch **ret) {
        OwnerWatch *w;
        int r;

        *ret = NULL;
        if (!b->bus)
                return 0;

        for (w = b->owners; w; w = w->next)
                if (strcmp(w->name, owner) == 0)
                        break;
        if (!w) {
                if (b->n_owners >= OWNERS_MAX)
                        return -EUSERS;
                w = calloc(1, sizeof(*w));
                if (!w)
                        return -ENOMEM;
                w->broker = b;
                w->name = strdup(owner);
                if (!w->name) {
                        owner_watch_free(w);
                        return -ENOMEM;
                }
                r = sd_bus_track_new(b->bus, &w->track, owner_track_handler, w);
                if (r >= 0)
                        r = sd_bus_track_add_name(w->track, owner);
                if (r < 0) {
                        owner_watch_free(w);
                        return r;
                }
                w->next = b->owners;
                b->owners = w;
                b->n_owners++;
        }
        w->n_ref++;
        *ret = w;
        return 0;
}

void owner_watch_unref(Broker *b, OwnerWatch *w) {
        if (!w || --w->n_ref > 0)
                return;
        for (OwnerWatch **p = &b->owners; *p; p = &(*p)->next)
                if (*p == w) {
                        *p = w->next;
                        break;
                }
        b->n_owners--;
        owner_watch_free(w);
}

int owner_watch_track(Container *c, const char *owner) {
        return owner_watch_ref(c->broker, owner, &c->owner_watch);
}

void owner_watch_untrack(Container *c) {
        owner_watch_unref(c->broker, TAKE_PTR(c->owner_watch));
}

int owner_watch_track_caller(Container *c, sd_bus_message *m) {
        return owner_watch_track(c, caller_name(c->broker, m));
}

