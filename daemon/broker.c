/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "container.h"
#include "group.h"
#include "log.h"
#include "quota.h"

static int on_iteration_end(sd_event_source *s, void *userdata);

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
        if (event) {
                /* On failure the cleanup frees backend and config too: they were handed over. */
                int r = sd_event_add_post(event, &b->iteration_end, on_iteration_end, b);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(b);
        return 0;
}

Broker *broker_free(Broker *b) {
        if (!b)
                return NULL;

        /* Containers first: they release groups, pins and memory. */
        while (b->containers)
                container_close(b->containers);
        broker_flush_changes(b);

        for (size_t i = 0; i < b->n_observers; i++)
                if (b->observers[i].ops->done)
                        b->observers[i].ops->done(b->observers[i].userdata);
        b->n_observers = 0;
        sd_event_source_disable_unref(b->iteration_end);

        quota_free_all(b);

        for (size_t i = 0; i < b->n_groups; i++)
                group_free(b->groups[i]);
        free(b->groups);

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

        r = backend_list_groups(b->backend, &infos, &n_infos);
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
                broker_group_added(b, g);
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
                broker_group_removed(b, g);
                group_free(g);
                memmove(b->groups + i, b->groups + i + 1, (b->n_groups - i - 1) * sizeof(Group *));
                b->n_groups--;
        }
        r = 0;

finish:
        backend_group_info_free_many(infos, n_infos);
        return r;
}

int broker_observe(Broker *b, const BrokerObserver *ops, void *userdata) {
        assert(b);
        assert(ops);

        if (b->n_observers >= BROKER_OBSERVERS_MAX)
                return -ENOSPC;
        b->observers[b->n_observers].ops = ops;
        b->observers[b->n_observers].userdata = userdata;
        b->n_observers++;
        return 0;
}

#define FOREACH_OBSERVER(b, i) for (size_t i = 0; i < (b)->n_observers; i++)
#define OBSERVER_CALL(b, i, member, ...)                                                        \
        do {                                                                                    \
                if ((b)->observers[i].ops->member)                                              \
                        (b)->observers[i].ops->member((b)->observers[i].userdata, __VA_ARGS__); \
        } while (0)

static void change_queue_push(ChangeLink **head, ChangeLink *l) {
        if (l->queued)
                return;
        l->queued = true;
        l->next = *head;
        *head = l;
}

static void change_queue_drop(ChangeLink **head, ChangeLink *l) {
        if (l->queued)
                for (ChangeLink **p = head; *p; p = &(*p)->next)
                        if (*p == l) {
                                *p = l->next;
                                break;
                        }
        l->queued = false;
        l->next = NULL;
}

/* Unlinks the first entry of the queue and returns it. */
static ChangeLink *change_queue_pop(ChangeLink **head) {
        ChangeLink *l = *head;

        if (l) {
                *head = l->next;
                l->next = NULL;
                l->queued = false;
        }
        return l;
}

void broker_flush_changes(Broker *b) {
        ChangeLink *l;

        /* Observers may queue more while we deliver: pop until empty. */
        while ((l = change_queue_pop(&b->changed_containers))) {
                Container *c = container_of(l, Container, changed);
                unsigned mask = TAKE_GENERIC(c->changed_mask, unsigned, 0);
                FOREACH_OBSERVER(b, i)
                        if (b->observers[i].ops->coalesce)
                                OBSERVER_CALL(b, i, container_changed, c, mask);
        }
        while ((l = change_queue_pop(&b->changed_groups))) {
                Group *g = container_of(l, Group, changed);
                FOREACH_OBSERVER(b, i)
                        if (b->observers[i].ops->coalesce)
                                OBSERVER_CALL(b, i, group_changed, g);
        }
}

void broker_iteration_end(Broker *b) {
        broker_flush_changes(b);
        FOREACH_OBSERVER(b, i)
                if (b->observers[i].ops->iteration_end)
                        b->observers[i].ops->iteration_end(b->observers[i].userdata);
}

static int on_iteration_end(sd_event_source *s, void *userdata) {
        broker_iteration_end(userdata);
        return 0;
}

/* Changes are made while the loop dispatches a source (a request, a timer, a device event), and sd-event
 * then runs the post source: it delivers them. Without it (unit tests, no event loop) they go at once. */
static void changes_schedule(Broker *b) {
        if (!b->iteration_end)
                broker_flush_changes(b);
}

static bool have_coalescing_observer(Broker *b) {
        FOREACH_OBSERVER(b, i)
                if (b->observers[i].ops->coalesce)
                        return true;
        return false;
}

void broker_container_added(Broker *b, Container *c) {
        FOREACH_OBSERVER(b, i)
                OBSERVER_CALL(b, i, container_added, c);
}

void broker_container_changed(Broker *b, Container *c, unsigned mask) {
        if (mask == 0)
                return;
        FOREACH_OBSERVER(b, i)
                if (!b->observers[i].ops->coalesce)
                        OBSERVER_CALL(b, i, container_changed, c, mask);
        if (!have_coalescing_observer(b))
                return;
        c->changed_mask |= mask;
        change_queue_push(&b->changed_containers, &c->changed);
        changes_schedule(b);
}

void broker_container_removed(Broker *b, Container *c) {
        /* A removal supersedes what was queued. */
        change_queue_drop(&b->changed_containers, &c->changed);
        c->changed_mask = 0;
        FOREACH_OBSERVER(b, i)
                OBSERVER_CALL(b, i, container_removed, c);
}

int broker_admit_fds(Broker *b, Container *c, unsigned n, BrokerError *e) {
        FOREACH_OBSERVER(b, i)
                if (b->observers[i].ops->admit_fds) {
                        int r = b->observers[i].ops->admit_fds(b->observers[i].userdata, c, n, e);
                        if (r < 0)
                                return r;
                }
        return 0;
}

void broker_group_added(Broker *b, Group *g) {
        FOREACH_OBSERVER(b, i)
                OBSERVER_CALL(b, i, group_added, g);
}

void broker_group_changed(Broker *b, Group *g) {
        FOREACH_OBSERVER(b, i)
                if (!b->observers[i].ops->coalesce)
                        OBSERVER_CALL(b, i, group_changed, g);
        if (!have_coalescing_observer(b))
                return;
        change_queue_push(&b->changed_groups, &g->changed);
        changes_schedule(b);
}

void broker_group_removed(Broker *b, Group *g) {
        change_queue_drop(&b->changed_groups, &g->changed);
        FOREACH_OBSERVER(b, i)
                OBSERVER_CALL(b, i, group_removed, g);
}

void broker_balloon_inhibitors_changed(Broker *b, int delta) {
        bool was = b->balloon_inhibitors > 0;

        assert(delta >= 0 || (unsigned) -delta <= b->balloon_inhibitors);

        if (delta == 0)
                return;
        b->balloon_inhibitors += delta;
        FOREACH_OBSERVER(b, i)
                OBSERVER_CALL(b, i, balloon_changed, was != (b->balloon_inhibitors > 0));
}
