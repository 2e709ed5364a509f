/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A container's DMA mappings: the checks of a request, the pinning transaction, Map, Unmap, Update. */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container-private.h"
#include "log.h"
#include "quota.h"

/* Whether [first, last] lies inside one usable IOVA range. */
bool container_iova_usable(const Container *c, uint64_t first, uint64_t last) {
        for (size_t i = 0; i < c->iommu.n_ranges; i++)
                if (first >= c->iommu.ranges[i].first && last <= c->iommu.ranges[i].last)
                        return true;
        return false;
}

/* A request's fds, each validated once however many maps name it (Update): fstat, fstatfs and fcntl
 * per map were most of an Update's cost, and all of a request's maps usually share one fd. */
typedef struct FdCheck {
        bool checked;
        MemoryFileInfo info;
} FdCheck;

/* container_check_map() with the fd's validation cached in *check (NULL: none); on success *ret_info
 * is the file's info. */
static int container_check_map_cached(Container *c, int fd, FdCheck *check, uint64_t offset, uint64_t size,
                                      uint64_t iova, uint32_t flags, uint64_t granule, MemoryFileInfo *ret_info,
                                      BrokerError *e) {
        MappingTableNode *conflict;
        uint64_t align;
        int r;

        /* Malformed first, then state, then the memory, then the address space. */
        if (flags == 0 || (flags & ~(BROKER_MAP_READ | BROKER_MAP_WRITE)))
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "Map flags 0x%" PRIx32 " are invalid: use 1 (device may read), 2 "
                                        "(device may write) or 3 (both).", flags);
        if (size == 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Map size must not be 0.");
        if (c->n_groups == 0)
                return broker_error_set(e, BROKER_ERROR_NO_GROUPS,
                                        "The container has no VFIO group attached, so there is no IOMMU "
                                        "to map into yet; AttachGroup() first.");

        if (!check)
                r = memory_check_fd(fd, flags, ret_info, e);
        else {
                /* Everything but the access the flags need is the same for every map of the fd. */
                if (!check->checked) {
                        r = memory_check_fd(fd, BROKER_MAP_READ, &check->info, e);
                        if (r < 0)
                                return r;
                        check->checked = true;
                }
                *ret_info = check->info;
                r = memory_check_access(ret_info, flags, e);
        }
        if (r < 0)
                return r;

        align = lowest_bit(c->iommu.page_sizes);
        if (align < ret_info->page_size)
                align = ret_info->page_size;
        const char *why = align == ret_info->page_size && ret_info->hugetlbfs ?
                "huge page size of the hugetlbfs file" : "smallest IOMMU/host page size";
        if (granule != 0) {
                if ((granule & (granule - 1)) || granule < align)
                        return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                                "Granule 0x%" PRIx64 " must be a power of two of at least 0x%" PRIx64
                                                " (the %s).", granule, align, why);
                align = granule;
                why = "granule";
        }
        if (offset % align)
                return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                        "Offset 0x%" PRIx64 " is not a multiple of 0x%" PRIx64 " (the %s).",
                                        offset, align, why);
        if (size % align)
                return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                        "Size 0x%" PRIx64 " is not a multiple of 0x%" PRIx64 " (the %s).",
                                        size, align, why);
        if (iova % align)
                return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                        "IOVA 0x%" PRIx64 " is not a multiple of 0x%" PRIx64 " (the %s).",
                                        iova, align, why);

        r = memory_check_range(ret_info, offset, size, e);
        if (r < 0)
                return r;

        if (iova + (size - 1) < iova)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "IOVA 0x%" PRIx64 " + size 0x%" PRIx64 " wraps around the address space.",
                                        iova, size);
        if (!container_iova_usable(c, iova, iova + (size - 1)))
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] is not inside one of the "
                                        "usable ranges the IOMMU reports (see the IovaRanges property).",
                                        iova, iova + (size - 1));

        conflict = mapping_table_first_intersecting(&c->discardable, iova, iova + (size - 1));
        if (conflict)
                return broker_error_set(e, BROKER_ERROR_OVERLAP,
                                        "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] overlaps the discardable region "
                                        "[0x%" PRIx64 ", 0x%" PRIx64 "] (see DiscardableRanges).", iova,
                                        iova + (size - 1), conflict->first, conflict->last);
        conflict = mapping_table_first_intersecting(&c->mappings, iova, iova + (size - 1));
        if (conflict)
                return broker_error_set(e, BROKER_ERROR_OVERLAP,
                                        "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] overlaps the existing mapping "
                                        "[0x%" PRIx64 ", 0x%" PRIx64 "].", iova, iova + (size - 1),
                                        conflict->first, conflict->last);
        return 0;
}

int container_check_map(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                        uint64_t granule, MemoryFileInfo *ret_info, BrokerError *e) {
        return container_check_map_cached(c, fd, NULL, offset, size, iova, flags, granule, ret_info, e);
}

Mapping *mapping_new(uint64_t iova, uint64_t size, uint64_t offset, uint32_t flags) {
        Mapping *m;

        /* Offsets are page-aligned by the checks (and by restore's) before they get here. */
        assert(!(offset & MAPPING_FLAGS_MASK));
        assert(!(flags & ~MAPPING_FLAGS_MASK));
        m = calloc(1, sizeof(*m));
        if (!m)
                return NULL;
        mapping_table_node_init(&m->node, iova, size);
        m->offset_flags = offset | flags;
        return m;
}

int container_check_range(uint64_t iova, uint64_t size, const char *what, BrokerError *e) {
        if (size == 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "%s size must not be 0.", what);
        if (iova + (size - 1) < iova)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "IOVA 0x%" PRIx64 " + size 0x%" PRIx64 " wraps around the address space.",
                                        iova, size);
        return 0;
}

static int container_memory_charge(void *userdata, uint64_t fds, uint64_t address_space, bool force,
                                   BrokerError *e) {
        Container *c = userdata;

        return quota_charge_memory(c->broker, c->uid, fds, address_space, force, e);
}

static void container_memory_release(void *userdata, uint64_t fds, uint64_t address_space) {
        Container *c = userdata;

        quota_release_memory(c->broker, c->uid, fds, address_space);
}

/* A new memory region or window is charged inside container_pin()'s memory_pool_acquire(), so a
 * refused fd or address space undoes the mapping's own charge like any other failure there. */
const MemoryPoolAccount container_memory_account = {
        .charge = container_memory_charge,
        .release = container_memory_release,
};

int container_pin(Container *c, Mapping *m, const PinSource *src, BrokerError *e) {
        uint64_t size = mapping_table_node_size(&m->node), vaddr = 0;
        int r;

        /* What the daemon held before a restart, or before a failed Update, it holds again whatever the
         * limits say now; a new request stays within them. */
        if (src->kind == PIN_FD || src->kind == PIN_REGION)
                r = quota_charge(c->broker, c->uid, 0, 1, size, e);
        else
                r = quota_charge_force(c->broker, c->uid, 0, 1, size);
        if (r < 0)
                goto fail;

        switch (src->kind) {
        case PIN_FD:
                r = memory_pool_acquire(c->memory, src->fd, src->info, mapping_offset(m), size, mapping_flags(m), &m->window, e);
                break;
        case PIN_REGION:
        case PIN_RESTORE:
                r = memory_pool_acquire_id(c->memory, src->region, mapping_offset(m), size, src->kind == PIN_RESTORE,
                                           &m->window, e);
                break;
        case PIN_ROLLBACK:
                assert(m->window);
                r = 0;
                break;
        }
        if (r < 0)
                goto fail_quota;
        vaddr = memory_window_vaddr(m->window, mapping_offset(m));

        if (src->kind == PIN_RESTORE)
                r = backend_container_restore_mapping(c->backend, vaddr, m->node.first, size, mapping_flags(m));
        else
                r = backend_container_map(c->backend, vaddr, m->node.first, size, mapping_flags(m));
        if (r < 0) {
                r = container_backend_error(c, src->kind == PIN_RESTORE ? BACKEND_OPERATION_UPDATE_DMA_VADDR :
                                            BACKEND_OPERATION_MAP_DMA, r,
                                            &(BackendErrorContext) { .iova = m->node.first, .size = size }, e);
                goto fail_memory;
        }

        r = mapping_table_insert(&c->mappings, &m->node, NULL);
        assert(r == 0); /* the callers checked the range */
        broker_mapping_added(c->broker, c, m);
        return 0;

fail_memory:
        memory_pool_release(c->memory, m->window);
        m->window = NULL;
fail_quota:
        quota_release(c->broker, c->uid, 0, 1, size);
fail:
        if (src->kind == PIN_ROLLBACK && m->window) {
                memory_pool_release(c->memory, m->window);
                m->window = NULL;
        }
        return r;
}

static int container_map_internal(Container *c, int fd, FdCheck *check, uint64_t offset, uint64_t size,
                                  uint64_t iova, uint32_t flags, BrokerError *e) {
        MemoryFileInfo info;
        _cleanup_free_ Mapping *m = NULL;
        int r;

        r = container_check_map_cached(c, fd, check, offset, size, iova, flags, 0, &info, e);
        if (r < 0)
                return r;

        m = mapping_new(iova, size, offset, flags);
        if (!m)
                return -ENOMEM;
        r = container_pin(c, m, &(PinSource) { .kind = PIN_FD, .fd = fd, .info = &info }, e);
        if (r < 0)
                return r;
        TAKE_PTR(m);
        return 0;
}

int container_map(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                  BrokerError *e) {
        int r = container_map_internal(c, fd, NULL, offset, size, iova, flags, e);
        if (r < 0)
                return r;
        broker_container_changed(c->broker, c, CONTAINER_CHANGE_MAPPINGS);
        return 0;
}

/* Removes every mapping inside the range from the kernel and the table; the mappings themselves (their
 * memory, and so the daemon's address) are handed to the caller in *removed, their quota released. */
int container_unmap_internal(Container *c, uint64_t iova, uint64_t size, bool regions, uint64_t *dirty_bitmap,
                                    Mapping ***removed, size_t *n_removed, BrokerError *e) {
        MappingTableNode *first, *last_node, *node, *dfirst;
        uint64_t last;
        int r;

        r = container_check_range(iova, size, "Unmap", e);
        if (r < 0)
                return r;
        last = iova + (size - 1);

        first = mapping_table_first_intersecting(&c->mappings, iova, last);
        dfirst = mapping_table_first_intersecting(&c->discardable, iova, last);
        /* Only a range that holds mappings reaches the kernel, which wants it page-aligned. */
        uint64_t align = lowest_bit(c->iommu.page_sizes);
        if ((first || dfirst) && align > 0 && ((iova | size) & (align - 1)))
                return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                        "Unmap range [0x%" PRIx64 ", 0x%" PRIx64 "] is not aligned to 0x%" PRIx64
                                        " (the smallest IOMMU page size).", iova, last, align);
        if (!first && !dfirst)
                return broker_error_set(e, BROKER_ERROR_NOT_MAPPED,
                                        "Nothing is mapped in IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "].",
                                        iova, last);
        if (dfirst) {
                /* A discardable region goes whole, with Unmap(); Discard() frees parts of it. */
                if (!regions)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                                "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] holds the discardable "
                                                "region [0x%" PRIx64 ", 0x%" PRIx64 "]; remove it with Unmap() or "
                                                "free parts of it with Discard().", iova, last, dfirst->first,
                                                dfirst->last);
                if (dfirst->first < iova)
                        return broker_error_set(e, BROKER_ERROR_WOULD_SPLIT,
                                                "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] starts inside the "
                                                "discardable region [0x%" PRIx64 ", 0x%" PRIx64 "]; use Discard() "
                                                "for parts of it.", iova, last, dfirst->first, dfirst->last);
                node = mapping_table_find(&c->discardable, last);
                if (node && node->last > last)
                        return broker_error_set(e, BROKER_ERROR_WOULD_SPLIT,
                                                "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] ends inside the "
                                                "discardable region [0x%" PRIx64 ", 0x%" PRIx64 "]; use Discard() "
                                                "for parts of it.", iova, last, node->first, node->last);
        }
        if (!first)
                return 0;
        if (first->first < iova)
                return broker_error_set(e, BROKER_ERROR_WOULD_SPLIT,
                                        "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] starts inside the mapping "
                                        "[0x%" PRIx64 ", 0x%" PRIx64 "]; mappings are removed whole.",
                                        iova, last, first->first, first->last);
        last_node = mapping_table_find(&c->mappings, last);
        if (last_node && last_node->last > last)
                return broker_error_set(e, BROKER_ERROR_WOULD_SPLIT,
                                        "IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] ends inside the mapping "
                                        "[0x%" PRIx64 ", 0x%" PRIx64 "]; mappings are removed whole.",
                                        iova, last, last_node->first, last_node->last);

        return container_unpin_range(c, iova, last, dirty_bitmap, removed, n_removed, e);
}

int container_unpin_range(Container *c, uint64_t iova, uint64_t last, uint64_t *dirty_bitmap, Mapping ***removed,
                          size_t *n_removed, BrokerError *e) {
        MappingTableNode *first, *node, *next;
        uint64_t unmapped = 0, expected = 0, size = last - iova + 1;
        int r;

        first = mapping_table_first_intersecting(&c->mappings, iova, last);
        if (!first)
                return 0;
        for (node = first; node && node->first <= last; node = mapping_table_next(node))
                expected += mapping_table_node_size(node);

        if (dirty_bitmap)
                r = backend_container_unmap_dirty(c->backend, iova, size, lowest_bit(c->iommu.page_sizes),
                                                  dirty_bitmap, &unmapped);
        else
                r = backend_container_unmap(c->backend, iova, size, &unmapped);
        if (r < 0)
                return container_backend_error(c, dirty_bitmap ? BACKEND_OPERATION_UNMAP_DMA_DIRTY :
                                               BACKEND_OPERATION_UNMAP_DMA, r,
                                               &(BackendErrorContext) { .iova = iova, .size = size }, e);
        if (unmapped != expected)
                log_warning("Container %" PRIu64 ": the backend unmapped 0x%" PRIx64 " bytes in [0x%" PRIx64
                            ", 0x%" PRIx64 "], expected 0x%" PRIx64 ".", c->id, unmapped, iova, last, expected);

        for (node = first; node && node->first <= last; node = next) {
                Mapping *m = container_of(node, Mapping, node), **a = NULL;

                next = mapping_table_next(node);
                mapping_table_remove(&c->mappings, node);
                broker_mapping_removed(c->broker, c, m);
                if (removed)
                        a = realloc(*removed, (*n_removed + 1) * sizeof(Mapping *));
                if (!a) {
                        /* Not kept for a rollback (not asked, or no memory for it): it is unmapped anyway. */
                        container_mapping_free(c, m);
                        continue;
                }
                quota_release(c->broker, c->uid, 0, 1, mapping_table_node_size(node));
                *removed = a;
                a[(*n_removed)++] = m;
        }
        return 0;
}

void container_mappings_release(Container *c, Mapping **l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                memory_pool_release(c->memory, l[i]->window);
                free(l[i]);
        }
        free(l);
}

/* After an Unmap: the memory goes, the regions inside the range go, and everybody hears of it. */
void container_unmap_done(Container *c, Mapping **removed, size_t n_removed, uint64_t iova, uint64_t size) {
        bool regions;

        container_mappings_release(c, removed, n_removed);
        regions = container_discardable_remove(c, iova, iova + (size - 1));
        broker_container_changed(c->broker, c,
                                 CONTAINER_CHANGE_MAPPINGS | (regions ? CONTAINER_PROPERTY_DISCARDABLE : 0));
}

int container_unmap(Container *c, uint64_t iova, uint64_t size, BrokerError *e) {
        Mapping **removed = NULL;
        size_t n_removed = 0;
        int r;

        r = container_unmap_internal(c, iova, size, true, NULL, &removed, &n_removed, e);
        if (r < 0)
                return r;
        container_unmap_done(c, removed, n_removed, iova, size);
        return 0;
}

int container_update(Container *c, const UpdateUnmap *unmaps, size_t n_unmaps, const int *fds, size_t n_fds,
                     const UpdateMap *maps, size_t n_maps, BrokerError *e) {
        Mapping **removed = NULL;
        size_t n_removed = 0, n_done = 0;
        BrokerError inner = BROKER_ERROR_INIT;
        _cleanup_free_ FdCheck *checks = NULL;
        int r = 0;

        /* Malformed requests are refused before anything moves. */
        for (size_t i = 0; i < n_maps; i++)
                if (maps[i].memory >= n_fds)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                                "Map #%zu names memory fd #%" PRIu32 ", but %zu fds were passed.",
                                                i, maps[i].memory, n_fds);

        if (n_maps > 0) {
                checks = calloc(n_fds, sizeof(FdCheck));
                if (!checks)
                        return -ENOMEM;
        }

        for (size_t i = 0; i < n_unmaps; i++) {
                r = container_unmap_internal(c, unmaps[i].iova, unmaps[i].size, false, NULL, &removed, &n_removed, &inner);
                if (r < 0) {
                        broker_error_set(e, inner.code == BROKER_ERROR_NONE ? BROKER_ERROR_INVALID_ARGS : inner.code,
                                         "Unmap #%zu: %s Nothing was changed.", i, inner.message);
                        goto rollback;
                }
        }
        for (; n_done < n_maps; n_done++) {
                const UpdateMap *m = &maps[n_done];
                r = container_map_internal(c, fds[m->memory], &checks[m->memory], m->offset, m->size, m->iova, m->flags, &inner);
                if (r < 0) {
                        if (inner.code == BROKER_ERROR_KERNEL)
                                broker_error_set_errno(e, r, "Map #%zu: %s; nothing was changed", n_done, inner.message);
                        else
                                broker_error_set(e, inner.code == BROKER_ERROR_NONE ? BROKER_ERROR_INVALID_ARGS :
                                                 inner.code, "Map #%zu: %s Nothing was changed.", n_done, inner.message);
                        goto rollback;
                }
        }

        container_mappings_release(c, removed, n_removed);
        if (n_unmaps > 0 || n_maps > 0)
                broker_container_changed(c->broker, c, CONTAINER_CHANGE_MAPPINGS);
        return 0;

rollback:
        /* All or nothing: the maps made so far go, the mappings removed so far come back. */
        for (size_t i = n_done; i-- > 0;) {
                Mapping **undo = NULL;
                size_t n_undo = 0;
                if (container_unmap_internal(c, maps[i].iova, maps[i].size, false, NULL, &undo, &n_undo, NULL) >= 0)
                        container_mappings_release(c, undo, n_undo);
        }
        for (size_t i = n_removed; i-- > 0;) {
                Mapping *m = removed[i];
                if (container_pin(c, m, &(PinSource) { .kind = PIN_ROLLBACK }, NULL) < 0) {
                        log_error("Container %" PRIu64 ": cannot restore mapping [0x%" PRIx64 ", 0x%" PRIx64
                                  "] during a rollback; it is gone.", c->id, m->node.first, m->node.last);
                        free(m);
                }
        }
        free(removed);
        return r;
}
