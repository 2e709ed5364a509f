/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A container a previous instance of the daemon left behind, rebuilt from what the state store kept,
 * and the hand-over to the next instance. */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container-private.h"
#include "group.h"
#include "log.h"
#include "quota.h"

int container_new_restored(Broker *b, uint64_t id, const char *owner, uid_t uid, const char *label,
                           BackendContainer *bc, const unsigned *groups, size_t n_groups, Container **ret,
                           BrokerError *e) {
        Container *c;
        int r;

        if (broker_find_container(b, id))
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Container %" PRIu64 " exists twice.", id);
        for (size_t i = 0; i < n_groups; i++) {
                Group *g = broker_find_group(b, groups[i]);
                if (!g || g->container)
                        return broker_error_set(e, BROKER_ERROR_NO_SUCH_GROUP,
                                                "VFIO group %u of container %" PRIu64 " is gone or taken.",
                                                groups[i], id);
        }

        r = container_alloc(b, id, owner, uid, label, &c);
        if (r < 0)
                return r;
        c->groups = calloc(n_groups ? n_groups : 1, sizeof(unsigned));
        if (!c->groups) {
                container_unalloc(c);
                return -ENOMEM;
        }
        /* Accounted as before the restart; limits may have changed meanwhile, but what is held is held. */
        r = quota_charge_force(b, uid, 1, 0, 0);
        if (r < 0) {
                container_unalloc(c);
                return r;
        }
        c->backend = bc;
        memcpy(c->groups, groups, n_groups * sizeof(unsigned));
        c->n_groups = n_groups;
        qsort(c->groups, c->n_groups, sizeof(unsigned), container_group_compare);
        container_link(c);

        for (size_t i = 0; i < n_groups; i++)
                broker_find_group(b, groups[i])->container = c;
        if (n_groups > 0)
                broker_balloon_inhibitors_changed(b, (int) n_groups);
        (void) container_refresh_iommu(c, NULL);

        *ret = c;
        return 0;
}

int container_restore_mapping(Container *c, unsigned region, uint64_t offset, uint64_t size, uint64_t iova,
                              uint32_t flags, BrokerError *e) {
        _cleanup_free_ Mapping *m = NULL;
        int r;

        if (size == 0 || iova + (size - 1) < iova || (flags & ~(BROKER_MAP_READ | BROKER_MAP_WRITE)) || !flags ||
            offset % 4096 || size % 4096)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Malformed mapping in the state.");
        if (mapping_table_first_intersecting(&c->mappings, iova, iova + (size - 1)))
                return broker_error_set(e, BROKER_ERROR_OVERLAP, "Overlapping mappings in the state.");

        m = mapping_new(iova, size, offset, flags);
        if (!m)
                return -ENOMEM;
        r = container_pin(c, m, &(PinSource) { .kind = PIN_RESTORE, .region = region }, e);
        if (r < 0)
                return r;
        TAKE_PTR(m);
        return 0;
}

void container_restore_done(Container *c) {
        broker_container_added(c->broker, c);
}

void container_forget_vaddrs(Container *c) {
        for (MappingTableNode *node = mapping_table_first(&c->mappings); node; node = mapping_table_next(node))
                (void) backend_container_invalidate_vaddr(c->backend, node->first, mapping_table_node_size(node));
}
