/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Dirty page tracking for migration (type1's VFIO_IOMMU_DIRTY_PAGES), with the bitmaps written into a
 * file the VMM passes. */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container-private.h"
#include "log.h"

int container_set_dirty_tracking(Container *c, bool start, BrokerError *e) {
        int r;

        if (c->n_groups == 0)
                return broker_error_set(e, BROKER_ERROR_NO_GROUPS,
                                        "The container has no VFIO group attached, so there is no IOMMU to track "
                                        "dirty pages in; AttachGroup() first.");
        if (c->dirty_tracking == start)
                return 0; /* as the kernel: starting twice is starting once */

        r = backend_container_set_dirty_tracking(c->backend, start);
        if (r < 0)
                return container_backend_error(c, start ? BACKEND_OPERATION_START_DIRTY_TRACKING :
                                               BACKEND_OPERATION_STOP_DIRTY_TRACKING, r, NULL, e);
        c->dirty_tracking = start;
        log_info("Container %" PRIu64 " (%s, uid %u): dirty page tracking %s.", c->id, c->label, c->uid,
                 start ? "started" : "stopped");
        broker_container_changed(c->broker, c, CONTAINER_PROPERTY_DIRTY_TRACKING);
        return 0;
}

/* The kernel's DIRTY_BITMAP_PAGES_MAX: one bitmap covers at most INT_MAX pages. */
#define DIRTY_BITMAP_PAGES_MAX UINT64_C(0x7fffffff)

/* Checks a bitmap request and the fd it goes to, so that nothing fails after an unmap but a write
 * the VMM sabotages meanwhile (truncating its file). Writes nothing: a refused request leaves the
 * caller's file as it was. */
static int dirty_bitmap_prepare(Container *c, uint64_t iova, uint64_t size, uint64_t page_size, int fd,
                                uint64_t fd_offset, uint64_t *ret_bytes, uint64_t **ret_bitmap, BrokerError *e) {
        _cleanup_free_ uint64_t *bitmap = NULL;
        MemoryFileInfo info;
        uint64_t min_page, bytes, pages;
        int r;

        if (c->n_groups == 0)
                return broker_error_set(e, BROKER_ERROR_NO_GROUPS, "The container has no VFIO group attached.");
        if (!c->dirty_tracking)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "Dirty page tracking is not started on this container; call "
                                        "StartDirtyTracking() first.");
        min_page = lowest_bit(c->iommu.page_sizes);
        if (page_size != min_page)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                        "The bitmap's page size must be the smallest IOMMU page size, 0x%" PRIx64
                                        ", not 0x%" PRIx64 ".", min_page, page_size);
        if (size == 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "The bitmap range must not be empty.");
        if ((iova | size) & (page_size - 1))
                return broker_error_set(e, BROKER_ERROR_UNALIGNED,
                                        "Bitmap range IOVA 0x%" PRIx64 " size 0x%" PRIx64 " is not aligned to the "
                                        "page size 0x%" PRIx64 ".", iova, size, page_size);
        if (iova + (size - 1) < iova)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "IOVA 0x%" PRIx64 " + size 0x%" PRIx64 " wraps around the address space.",
                                        iova, size);
        pages = size / page_size;
        if (pages > DIRTY_BITMAP_PAGES_MAX)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "A bitmap covers at most %" PRIu64 " pages; split the range.",
                                        DIRTY_BITMAP_PAGES_MAX);
        bytes = (pages + 63) / 64 * 8;

        r = memory_check_fd(fd, BROKER_MAP_WRITE, &info, e);
        if (r < 0)
                return r;
        if (fd_offset % 8 || fd_offset + bytes < fd_offset || fd_offset + bytes > info.file_size)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "The bitmap needs 0x%" PRIx64 " bytes at an 8-byte aligned offset of the "
                                        "file; offset 0x%" PRIx64 " in a file of 0x%" PRIx64 " bytes does not "
                                        "hold them.", bytes, fd_offset, info.file_size);

        r = memory_check_writable(fd, e);
        if (r < 0)
                return r;

        bitmap = calloc(1, bytes);
        if (!bitmap)
                return -ENOMEM;
        *ret_bytes = bytes;
        *ret_bitmap = TAKE_PTR(bitmap);
        return 0;
}

static uint64_t bitmap_count(const uint64_t *bitmap, uint64_t bytes) {
        uint64_t n = 0;
        for (uint64_t i = 0; i < bytes / 8; i++)
                n += (uint64_t) __builtin_popcountll(bitmap[i]);
        return n;
}

int container_dirty_bitmap(Container *c, uint64_t iova, uint64_t size, uint64_t page_size, int fd,
                           uint64_t fd_offset, uint64_t *ret_dirty, BrokerError *e) {
        _cleanup_free_ uint64_t *bitmap = NULL;
        MappingTableNode *node;
        uint64_t bytes = 0;
        int r;

        r = dirty_bitmap_prepare(c, iova, size, page_size, fd, fd_offset, &bytes, &bitmap, e);
        if (r < 0)
                return r;

        /* The kernel wants whole mappings: a range may hold several, but cut none. */
        node = mapping_table_find(&c->mappings, iova);
        if (node && node->first < iova)
                return broker_error_set(e, BROKER_ERROR_WOULD_SPLIT,
                                        "The bitmap range starts inside the mapping [0x%" PRIx64 ", 0x%" PRIx64
                                        "]; ranges cover whole mappings.", node->first, node->last);
        node = mapping_table_find(&c->mappings, iova + (size - 1));
        if (node && node->last > iova + (size - 1))
                return broker_error_set(e, BROKER_ERROR_WOULD_SPLIT,
                                        "The bitmap range ends inside the mapping [0x%" PRIx64 ", 0x%" PRIx64
                                        "]; ranges cover whole mappings.", node->first, node->last);

        r = backend_container_dirty_bitmap(c->backend, iova, size, page_size, bitmap);
        if (r < 0)
                return container_backend_error(c, BACKEND_OPERATION_GET_DIRTY_BITMAP, r,
                                               &(BackendErrorContext) { .iova = iova, .size = size }, e);
        r = memory_write(fd, bitmap, bytes, fd_offset, e);
        if (r < 0)
                return r;
        if (ret_dirty)
                *ret_dirty = bitmap_count(bitmap, bytes);
        return 0;
}

int container_unmap_dirty(Container *c, uint64_t iova, uint64_t size, uint64_t page_size, int fd,
                          uint64_t fd_offset, uint64_t *ret_dirty, BrokerError *e) {
        _cleanup_free_ uint64_t *bitmap = NULL;
        Mapping **removed = NULL;
        size_t n_removed = 0;
        uint64_t bytes = 0;
        int r;

        r = dirty_bitmap_prepare(c, iova, size, page_size, fd, fd_offset, &bytes, &bitmap, e);
        if (r < 0)
                return r;
        r = container_unmap_internal(c, iova, size, true, bitmap, &removed, &n_removed, e);
        if (r < 0)
                return r;
        container_unmap_done(c, removed, n_removed, iova, size);

        /* The mappings are gone whatever happens now; a write that fails (the VMM truncated the file
         * meanwhile) loses only the report, and says so. */
        r = memory_write(fd, bitmap, bytes, fd_offset, e);
        if (r < 0)
                return r;
        if (ret_dirty)
                *ret_dirty = bitmap_count(bitmap, bytes);
        return 0;
}
