/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Coordinated discard: what QEMU's RamDiscardManager does for virtio-mem inside one process, offered
 * to any VMM and memory agent. Pinned pages and discarded memory must never meet (see the "Why
 * ballooning" paragraph of SPEC.md): a page the VMM punches out of its memfd while the IOMMU still
 * pins it keeps receiving DMA that the guest never sees. So a discardable region is mapped granule by
 * granule, each granule a DMA mapping of its own (type1 removes mappings only whole), and the VMM
 * calls Discard() before it frees memory and Populate() before the guest uses it again. What lies in
 * a discardable region is published (DiscardableRanges), so a balloon agent knows where it may
 * reclaim without stopping DMA elsewhere.
 *
 * A region holds a reference to its memory for its whole life, populated or not: the daemon's view of
 * the VMM's file (one window covering the region) is what Populate() maps again. */

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>

#include "container-private.h"
#include "log.h"
#include "quota.h"

bool container_discardable_remove(Container *c, uint64_t first, uint64_t last) {
        MappingTableNode *node, *next;
        bool any = false;

        for (node = mapping_table_first_intersecting(&c->discardable, first, last); node && node->first <= last;
             node = next) {
                DiscardRegion *d = container_of(node, DiscardRegion, node);

                next = mapping_table_next(node);
                assert(!mapping_table_first_intersecting(&c->mappings, node->first, node->last));
                mapping_table_remove(&c->discardable, node);
                memory_pool_release(c->memory, d->window);
                free(d);
                any = true;
        }
        return any;
}

/* Takes the reference to memory (released on failure); the range must be free. */
static int discard_region_add(Container *c, uint64_t iova, uint64_t size, uint64_t offset, uint32_t flags,
                              uint64_t granule, MemoryWindow *memory, DiscardRegion **ret) {
        DiscardRegion *d;
        int r;

        d = calloc(1, sizeof(*d));
        if (!d) {
                memory_pool_release(c->memory, memory);
                return -ENOMEM;
        }
        mapping_table_node_init(&d->node, iova, size);
        d->window = memory;
        d->offset = offset;
        d->flags = flags;
        d->granule = granule;
        r = mapping_table_insert(&c->discardable, &d->node, NULL);
        assert(r == 0);
        if (ret)
                *ret = d;
        return 0;
}

/* Maps one granule of d at iova. */
static int granule_map(Container *c, DiscardRegion *d, uint64_t iova, BrokerError *e) {
        _cleanup_free_ Mapping *m = NULL;
        int r;

        m = mapping_new(iova, d->granule, d->offset + (iova - d->node.first), d->flags);
        if (!m)
                return -ENOMEM;
        r = container_pin(c, m, &(PinSource) { .kind = PIN_REGION,
                                               .region = memory_region_id(memory_window_region(d->window)) }, e);
        if (r < 0)
                return r;
        TAKE_PTR(m);
        return 0;
}

/* Unmaps every populated granule in [iova, last] from the kernel and the table. */
static int granules_unmap(Container *c, uint64_t iova, uint64_t last, BrokerError *e) {
        return container_unpin_range(c, iova, last, NULL, NULL, NULL, e);
}

static void changed(Container *c, ContainerProperty extra) {
        broker_container_changed(c->broker, c, CONTAINER_CHANGE_MAPPINGS | extra);
}

int container_map_discardable(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                              uint64_t granule, bool populated, BrokerError *e) {
        DiscardRegion *region;
        MemoryWindow *memory;
        MemoryFileInfo info;
        int r;

        if (granule == 0)
                return broker_error_set(e, BROKER_ERROR_UNALIGNED, "The granule must not be 0.");
        r = container_check_map(c, fd, offset, size, iova, flags, granule, &info, e);
        if (r < 0)
                return r;
        if (populated && size / granule > container_dma_available(c))
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                        "Populating 0x%" PRIx64 " bytes in granules of 0x%" PRIx64 " needs %" PRIu64
                                        " mappings, but the kernel allows only %" PRIu32 " more (DmaAvailable); use "
                                        "a larger granule.", size, granule, size / granule,
                                        container_dma_available(c));

        r = memory_pool_acquire(c->memory, fd, &info, offset, size, flags, &memory, e);
        if (r < 0)
                return r;
        r = discard_region_add(c, iova, size, offset, flags, granule, memory, &region);
        if (r < 0)
                return r;

        if (populated)
                for (uint64_t a = iova; a - iova < size; a += granule) {
                        r = granule_map(c, region, a, e);
                        if (r < 0) {
                                BrokerError ignored = BROKER_ERROR_INIT;
                                if (a > iova && granules_unmap(c, iova, a - 1, &ignored) < 0)
                                        log_error("Container %" PRIu64 ": cannot undo a failed MapDiscardable: %s",
                                                  c->id, ignored.message);
                                if (!mapping_table_first_intersecting(&c->mappings, iova, iova + (size - 1)))
                                        (void) container_discardable_remove(c, iova, iova + (size - 1));
                                return r;
                        }
                }

        log_debug("Container %" PRIu64 ": discardable region [0x%" PRIx64 ", 0x%" PRIx64 "], granule 0x%" PRIx64
                  ", %s.", c->id, iova, iova + (size - 1), granule, populated ? "populated" : "discarded");
        changed(c, CONTAINER_PROPERTY_DISCARDABLE);
        return 0;
}

/* The region that holds all of [iova, iova+size), checked for granule alignment. */
static int discard_range(Container *c, uint64_t iova, uint64_t size, DiscardRegion **ret, BrokerError *e) {
        MappingTableNode *node;
        DiscardRegion *d;
        int r;

        r = container_check_range(iova, size, "The range's", e);
        if (r < 0)
                return r;
        node = mapping_table_find(&c->discardable, iova);
        if (!node)
                return broker_error_set(e, BROKER_ERROR_NOT_MAPPED,
                                        "IOVA 0x%" PRIx64 " is not in a discardable region (see DiscardableRanges; "
                                        "MapDiscardable() makes one).", iova);
        d = container_of(node, DiscardRegion, node);
        if (iova + (size - 1) > node->last)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] runs past the end of the "
                                        "discardable region [0x%" PRIx64 ", 0x%" PRIx64 "].", iova,
                                        iova + (size - 1), node->first, node->last);
        if ((iova | size) & (d->granule - 1))
                return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                        "IOVA 0x%" PRIx64 " and size 0x%" PRIx64 " must be multiples of the "
                                        "region's granule 0x%" PRIx64 ".", iova, size, d->granule);
        *ret = d;
        return 0;
}

int container_discard(Container *c, uint64_t iova, uint64_t size, BrokerError *e) {
        DiscardRegion *d = NULL;
        int r;

        r = discard_range(c, iova, size, &d, e);
        if (r < 0)
                return r;
        if (!mapping_table_first_intersecting(&c->mappings, iova, iova + (size - 1)))
                return 0; /* discarded already: nothing changes */
        r = granules_unmap(c, iova, iova + (size - 1), e);
        if (r < 0)
                return r;
        changed(c, 0);
        return 0;
}

int container_populate(Container *c, uint64_t iova, uint64_t size, BrokerError *e) {
        DiscardRegion *d = NULL;
        uint64_t *made = NULL;
        size_t n_made = 0;
        int r;

        r = discard_range(c, iova, size, &d, e);
        if (r < 0)
                return r;

        for (uint64_t a = iova; a - iova < size; a += d->granule) {
                if (mapping_table_find(&c->mappings, a))
                        continue; /* populated already */
                uint64_t *l = realloc(made, (n_made + 1) * sizeof(uint64_t));
                if (!l) {
                        r = -ENOMEM;
                        goto rollback;
                }
                made = l;
                r = granule_map(c, d, a, e);
                if (r < 0)
                        goto rollback;
                made[n_made++] = a;
        }
        free(made);
        if (n_made > 0)
                changed(c, 0);
        return 0;

rollback:
        /* All or nothing: what this call populated goes again. */
        for (size_t i = 0; i < n_made; i++) {
                BrokerError ignored = BROKER_ERROR_INIT;
                if (granules_unmap(c, made[i], made[i] + (d->granule - 1), &ignored) < 0)
                        log_error("Container %" PRIu64 ": cannot undo a failed Populate: %s", c->id, ignored.message);
        }
        free(made);
        return r;
}

int container_restore_discardable(Container *c, unsigned region, uint64_t offset, uint64_t size, uint64_t iova,
                                  uint32_t flags, uint64_t granule, BrokerError *e) {
        MemoryWindow *memory;
        int r;

        if (size == 0 || iova + (size - 1) < iova || granule == 0 || (granule & (granule - 1)) ||
            ((iova | size | offset) & (granule - 1)) || !flags || (flags & ~(BROKER_MAP_READ | BROKER_MAP_WRITE)))
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Malformed discardable region in the state.");
        if (mapping_table_first_intersecting(&c->discardable, iova, iova + (size - 1)))
                return broker_error_set(e, BROKER_ERROR_OVERLAP, "Overlapping discardable regions in the state.");

        r = memory_pool_acquire_id(c->memory, region, offset, size, true, &memory, e);
        if (r < 0)
                return r;
        return discard_region_add(c, iova, size, offset, flags, granule, memory, NULL);
}
