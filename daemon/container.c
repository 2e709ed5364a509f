/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A container's life and its groups: creation, Close(), AttachGroup, DetachGroup. */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container-private.h"
#include "event-util.h"
#include "group.h"
#include "log.h"
#include "message-ids.h"
#include "quota.h"

/* How long the memory pool keeps a window nothing borrows (memory.h): long enough for a VMM's
 * unmap-and-map-again, short enough that memory the VMM let go is not held. */
#define MEMORY_LINGER_USEC (250 * 1000)

static int on_memory_linger(sd_event_source *s, uint64_t usec, void *userdata) {
        Container *c = userdata;

        memory_pool_reap(c->memory);
        /* A region that went is a change the state store saves (and its fd leaves the store). */
        broker_container_changed(c->broker, c, CONTAINER_CHANGE_FDS);
        return 0;
}

static void container_memory_linger(void *userdata) {
        Container *c = userdata;

        if (event_arm_oneshot_relative(c->broker->event, &c->memory_linger, MEMORY_LINGER_USEC, on_memory_linger,
                                       c) < 0)
                memory_pool_reap(c->memory);
}

int container_alloc(Broker *b, uint64_t id, const char *owner, uid_t uid, const char *label,
                           Container **ret) {
        _cleanup_free_ Container *c = NULL;
        _cleanup_(memory_pool_freep) MemoryPool *pool = NULL;
        _cleanup_free_ char *path = NULL, *owner_copy = NULL, *label_copy = NULL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        pool = memory_pool_new();
        owner_copy = strdup(owner);
        label_copy = strdup(label ?: "");
        if (!pool || !owner_copy || !label_copy)
                return -ENOMEM;
        if (asprintf(&path, BROKER_CONTAINER_PREFIX "/%" PRIu64, id) < 0)
                return -ENOMEM;

        c->broker = b;
        c->id = id;
        c->path = TAKE_PTR(path);
        c->owner = TAKE_PTR(owner_copy);
        c->label = TAKE_PTR(label_copy);
        c->uid = uid;
        c->memory = TAKE_PTR(pool);
        memory_pool_set_account(c->memory, &container_memory_account, c);
        if (b->event)
                memory_pool_set_linger(c->memory, container_memory_linger, c);
        c->mappings = MAPPING_TABLE_INIT;
        c->discardable = MAPPING_TABLE_INIT;
        *ret = TAKE_PTR(c);
        return 0;
}

void container_link(Container *c) {
        Broker *b = c->broker;

        c->next = b->containers;
        if (b->containers)
                b->containers->prev = c;
        b->containers = c;
        b->n_containers++;
        if (c->id >= b->next_container_id)
                b->next_container_id = c->id + 1;
}

void container_unalloc(Container *c) {
        c->memory_linger = sd_event_source_disable_unref(c->memory_linger);
        memory_pool_free(c->memory);
        free(c->path);
        free(c->owner);
        free(c->label);
        free(c);
}

int container_new(Broker *b, const char *owner, uid_t uid, const char *label, Container **ret,
                  BrokerError *e) {
        _cleanup_(backend_container_freep) BackendContainer *bc = NULL;
        Container *c;
        int r;

        assert(b);
        assert(owner);
        assert(ret);

        r = container_alloc(b, b->next_container_id, owner, uid, label, &c);
        if (r < 0)
                return r;

        r = quota_charge(b, uid, 1, 0, 0, e);
        if (r < 0) {
                container_unalloc(c);
                return r;
        }

        r = backend_container_new(b->backend, &bc);
        if (r < 0) {
                r = container_backend_error(c, BACKEND_OPERATION_NEW_CONTAINER, r, NULL, e);
                quota_release(b, uid, 1, 0, 0);
                container_unalloc(c);
                return r;
        }
        c->backend = TAKE_PTR(bc);
        container_link(c);
        broker_container_added(b, c);
        log_event(&(LogEvent) { LOG_MESSAGE_CONTAINER_CREATED, .container = c->id, .label = c->label,
                                .owner = c->owner, .uid = &c->uid },
                  "Container %" PRIu64 " (%s) created for %s, uid %u.", c->id, c->label, c->owner, c->uid);

        *ret = c;
        return 0;
}

void container_mapping_free(Container *c, Mapping *m) {
        quota_release(c->broker, c->uid, 0, 1, mapping_table_node_size(&m->node));
        memory_pool_release(c->memory, m->window);
        free(m);
}

static Container *container_free(Container *c) {
        MappingTableNode *node, *next;
        Broker *b;

        if (!c)
                return NULL;
        b = c->broker;
        assert(!c->changed.queued);

        if (c->prev)
                c->prev->next = c->next;
        else
                b->containers = c->next;
        if (c->next)
                c->next->prev = c->prev;
        b->n_containers--;
        if (!b->handing_over)
                log_event(&(LogEvent) { LOG_MESSAGE_CONTAINER_CLOSED, .container = c->id, .label = c->label,
                                        .owner = c->owner, .uid = &c->uid },
                          "Container %" PRIu64 " (%s, uid %u) closed: %zu groups, %zu mappings released.", c->id,
                          c->label, c->uid, c->n_groups, container_n_mappings(c));

        if (b->handing_over)
                /* The next instance takes over: leave every kernel object as it is. */
                backend_container_abandon(c->backend);
        else {
                /* The backend unmaps (unpins) and detaches everything first; only then may the memory
                 * the IOMMU pointed at be unmapped from the daemon. */
                backend_container_free(c->backend);
        }

        for (size_t i = 0; i < c->n_groups; i++) {
                Group *g = broker_find_group(b, c->groups[i]);
                if (g) {
                        g->container = NULL;
                        broker_group_changed(b, g);
                }
        }
        if (c->n_groups > 0)
                broker_balloon_inhibitors_changed(b, -(int) c->n_groups);
        free(c->groups);

        MAPPING_TABLE_FOREACH_SAFE(node, next, &c->mappings) {
                mapping_table_remove(&c->mappings, node);
                container_mapping_free(c, container_of(node, Mapping, node));
        }
        container_discardable_remove(c, 0, UINT64_MAX);
        backend_iommu_info_done(&c->iommu);
        quota_release(b, c->uid, 1, 0, 0);
        strv_free(c->stored_fds);
        container_unalloc(c); /* the memory last, now that neither the IOMMU nor a mapping uses it */
        return NULL;
}

void container_close(Container *c) {
        if (!c)
                return;
        log_debug("Container %s closed.", c->path);
        /* The watchers hear of it while the container is still whole (the state store removes its fds,
         * the D-Bus face its object and owner watch); then everything goes. */
        broker_container_removed(c->broker, c);
        container_free(c);
}

static ssize_t container_group_index(const Container *c, unsigned id) {
        for (size_t i = 0; i < c->n_groups; i++)
                if (c->groups[i] == id)
                        return (ssize_t) i;
        return -1;
}

int container_refresh_iommu(Container *c, BrokerError *e) {
        BackendIommuInfo info = {};
        int r;

        if (c->n_groups == 0) {
                backend_iommu_info_done(&c->iommu);
                return 0;
        }

        r = backend_container_get_iommu_info(c->backend, &info);
        if (r < 0)
                return container_backend_error(c, BACKEND_OPERATION_GET_IOMMU_INFO, r, NULL, e);
        backend_iommu_info_done(&c->iommu);
        c->iommu = info;
        /* The kernel counts what is available now; the limit is that plus what we hold. */
        c->dma_limit = info.dma_available == UINT32_MAX ? UINT64_MAX :
                       (uint64_t) info.dma_available + container_n_mappings(c);
        return 0;
}

int container_group_compare(const void *a, const void *b) {
        unsigned x = *(const unsigned *) a, y = *(const unsigned *) b;
        return x < y ? -1 : x > y;
}

/* A group came or went: the journal and the watchers hear of it (every group can change the IOMMU's
 * ranges, page sizes and mapping limit). */
static void groups_changed(Container *c, unsigned id, bool attached, unsigned extra) {
        log_event(&(LogEvent) { attached ? LOG_MESSAGE_GROUP_ATTACHED : LOG_MESSAGE_GROUP_DETACHED,
                                .container = c->id, .label = c->label, .uid = &c->uid, .group = &id },
                  "Container %" PRIu64 " (%s, uid %u): %s VFIO group %u.", c->id, c->label, c->uid,
                  attached ? "attached" : "detached", id);
        broker_container_changed(c->broker, c, CONTAINER_PROPERTY_GROUPS | CONTAINER_PROPERTY_DMA_AVAILABLE |
                                                       CONTAINER_PROPERTY_IOVA_RANGES | CONTAINER_PROPERTY_PAGE_SIZES |
                                                       extra);
}

int container_attach_group(Container *c, unsigned id, BrokerError *e) {
        Broker *b = c->broker;
        Group *g;
        unsigned *a;
        int r;

        g = broker_find_group(b, id);
        if (!g)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_GROUP,
                                        "There is no VFIO group %u on this host; the Group objects under "
                                        BROKER_GROUP_PREFIX " list the groups bound to vfio.", id);
        if (g->container == c)
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "VFIO group %u is already attached to this container.", id);
        if (g->container)
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "VFIO group %u is attached to another container (%s); a group can "
                                        "be in one container at a time.", id, g->container->path);

        /* Viability changes as drivers are bound and unbound; ask the backend now, not at startup. */
        (void) group_refresh(g);
        if (!g->viable) {
                _cleanup_free_ char *devices = group_devices_joined(g);
                return broker_error_set(e, BROKER_ERROR_NOT_VIABLE,
                                        "VFIO group %u is not viable: every device in it (%s) must be bound "
                                        "to vfio-pci (or have no driver) before it can be used.",
                                        id, devices ?: "?");
        }

        /* The group's fd (and, with the first group, the container's) must be kept across restarts. */
        r = broker_admit_fds(b, c, c->n_groups == 0 ? 2 : 1, e);
        if (r < 0)
                return r;

        a = realloc(c->groups, (c->n_groups + 1) * sizeof(unsigned));
        if (!a)
                return -ENOMEM;
        c->groups = a;

        r = backend_container_attach_group(c->backend, id);
        if (r == -EPERM)
                /* Not viable after all (a driver was bound meanwhile), or the IOMMU refused it. */
                (void) group_refresh(g);
        if (r < 0)
                return container_backend_error(c, BACKEND_OPERATION_ATTACH_GROUP, r,
                                               &(BackendErrorContext) { .group = id }, e);

        c->groups[c->n_groups++] = id;
        qsort(c->groups, c->n_groups, sizeof(unsigned), container_group_compare);

        /* Every attached group can narrow the usable IOVA ranges. */
        r = container_refresh_iommu(c, e);
        if (r < 0) {
                (void) backend_container_detach_group(c->backend, id);
                memmove(c->groups + container_group_index(c, id),
                        c->groups + container_group_index(c, id) + 1,
                        (c->n_groups - container_group_index(c, id) - 1) * sizeof(unsigned));
                c->n_groups--;
                return r;
        }

        g->container = c;
        groups_changed(c, id, true, c->n_groups == 1 ? CONTAINER_PROPERTY_BALLOON_INHIBITED : 0);
        broker_group_changed(b, g);
        broker_balloon_inhibitors_changed(b, +1);
        return 0;
}

int container_detach_group(Container *c, unsigned id, BrokerError *e) {
        Broker *b = c->broker;
        ssize_t i;
        Group *g;
        int r;

        i = container_group_index(c, id);
        if (i < 0)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_GROUP,
                                        "VFIO group %u is not attached to this container.", id);

        /* The kernel releases the IOMMU, and with it every DMA mapping, when the last group leaves a
         * container. A VMM never loses its mappings behind its back: refuse instead. */
        if (c->n_groups == 1 && container_n_mappings(c) > 0)
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "VFIO group %u is the last group of this container, which still has "
                                        "%zu mappings; detaching it would drop them all. Unmap them first, "
                                        "or Close() the container.", id, container_n_mappings(c));

        r = backend_container_detach_group(c->backend, id);
        if (r < 0)
                return container_backend_error(c, BACKEND_OPERATION_DETACH_GROUP, r,
                                               &(BackendErrorContext) { .group = id }, e);

        memmove(c->groups + i, c->groups + i + 1, (c->n_groups - i - 1) * sizeof(unsigned));
        c->n_groups--;
        /* The IOMMU, and its dirty tracking, goes with the last group. */
        bool tracking_gone = c->n_groups == 0 && c->dirty_tracking;
        if (tracking_gone)
                c->dirty_tracking = false;

        r = container_refresh_iommu(c, NULL);
        if (r < 0)
                log_warning_errno(r, "Container %" PRIu64 ": failed to re-read the IOMMU info: %m", c->id);

        g = broker_find_group(b, id);
        if (g) {
                g->container = NULL;
                broker_group_changed(b, g);
        }
        groups_changed(c, id, false, (c->n_groups == 0 ? CONTAINER_PROPERTY_BALLOON_INHIBITED : 0) |
                                     (tracking_gone ? CONTAINER_PROPERTY_DIRTY_TRACKING : 0));
        broker_balloon_inhibitors_changed(b, -1);
        return 0;
}
