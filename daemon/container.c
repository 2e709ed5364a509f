/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container.h"
#include "container-dbus.h"
#include "group.h"
#include "group-dbus.h"
#include "log.h"
#include "message-ids.h"
#include "quota.h"
#include "state.h"

static int container_alloc(Broker *b, uint64_t id, const char *owner, uid_t uid, const char *label,
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
        c->mappings = MAPPING_TABLE_INIT;
        c->discardable = MAPPING_TABLE_INIT;
        *ret = TAKE_PTR(c);
        return 0;
}

static void container_link(Container *c) {
        Broker *b = c->broker;

        c->next = b->containers;
        if (b->containers)
                b->containers->prev = c;
        b->containers = c;
        b->n_containers++;
        if (c->id >= b->next_container_id)
                b->next_container_id = c->id + 1;
}

static void container_unalloc(Container *c) {
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

        r = b->backend->ops->container_new(b->backend, &bc, e);
        if (r < 0) {
                quota_release(b, uid, 1, 0, 0);
                container_unalloc(c);
                return r;
        }
        c->backend = TAKE_PTR(bc);
        container_link(c);
        (void) state_save_container(c);
        log_event(&(LogEvent) { LOG_MESSAGE_CONTAINER_CREATED, .container = c->id, .label = c->label, .owner = c->owner, .uid = &c->uid }, "Container %" PRIu64 " (%s) created for %s, uid %u.", c->id, c->label, c->owner, c->uid);

        *ret = c;
        return 0;
}

void container_mapping_free(Container *c, Mapping *m) {
        quota_release(c->broker, c->uid, 0, 1, mapping_table_node_size(&m->node));
        memory_pool_release(c->memory, m->region);
        free(m);
}

Container *container_free(Container *c) {
        MappingTableNode *node, *next;
        Broker *b;

        if (!c)
                return NULL;
        b = c->broker;

        if (c->prev)
                c->prev->next = c->next;
        else
                b->containers = c->next;
        if (c->next)
                c->next->prev = c->prev;
        b->n_containers--;
        if (!b->handing_over) log_event(&(LogEvent) { LOG_MESSAGE_CONTAINER_CLOSED, .container = c->id, .label = c->label, .owner = c->owner, .uid = &c->uid }, "Container %" PRIu64 " (%s, uid %u) closed: %zu groups, %zu mappings released.", c->id, c->label, c->uid, c->n_groups, container_n_mappings(c));

        if (b->handing_over)
                /* The next instance takes over: leave every kernel object as it is. */
                c->backend->backend->ops->container_abandon(c->backend);
        else {
                /* The backend unmaps (unpins) and detaches everything first; only then may the memory
                 * the IOMMU pointed at be unmapped from the daemon. */
                backend_container_free(c->backend);
                state_forget_container(c);
        }

        for (size_t i = 0; i < c->n_groups; i++) {
                Group *g = broker_find_group(b, c->groups[i]);
                if (g) {
                        g->container = NULL;
                        (void) group_dbus_emit_changed(g);
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
        memory_pool_free(c->memory);
        backend_iommu_info_done(&c->iommu);
        quota_release(b, c->uid, 1, 0, 0);

        container_dbus_untrack(c);
        strv_free(c->stored_fds);
        free(c->path);
        free(c->owner);
        free(c->label);
        free(c);
        return NULL;
}

static ssize_t container_group_index(const Container *c, unsigned id) {
        for (size_t i = 0; i < c->n_groups; i++)
                if (c->groups[i] == id)
                        return (ssize_t) i;
        return -1;
}

static int container_refresh_iommu(Container *c, BrokerError *e) {
        BackendIommuInfo info = {};
        int r;

        if (c->n_groups == 0) {
                backend_iommu_info_done(&c->iommu);
                return 0;
        }

        r = c->backend->backend->ops->container_get_iommu_info(c->backend, &info, e);
        if (r < 0)
                return r;
        backend_iommu_info_done(&c->iommu);
        c->iommu = info;
        /* The kernel counts what is available now; the limit is that plus what we hold. */
        c->dma_limit = info.dma_available == UINT32_MAX ? UINT64_MAX :
                       (uint64_t) info.dma_available + container_n_mappings(c);
        return 0;
}

static int unsigned_compare(const void *a, const void *b) {
        unsigned x = *(const unsigned *) a, y = *(const unsigned *) b;
        return x < y ? -1 : x > y;
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

        a = realloc(c->groups, (c->n_groups + 1) * sizeof(unsigned));
        if (!a)
                return -ENOMEM;
        c->groups = a;

        r = b->backend->ops->container_attach_group(c->backend, id, e);
        if (r < 0) {
                if (r == -EBUSY)
                        return broker_error_set(e, BROKER_ERROR_BUSY,
                                                "VFIO group %u is in use outside the broker, or device fds of "
                                                "a closed container are still open.", id);
                if (r == -EPERM)
                        return broker_error_set(e, BROKER_ERROR_NOT_VIABLE,
                                                "The kernel reports VFIO group %u as not viable.", id);
                return r;
        }

        c->groups[c->n_groups++] = id;
        qsort(c->groups, c->n_groups, sizeof(unsigned), unsigned_compare);

        /* Every attached group can narrow the usable IOVA ranges. */
        r = container_refresh_iommu(c, e);
        if (r < 0) {
                BrokerError ignored = BROKER_ERROR_INIT;
                (void) b->backend->ops->container_detach_group(c->backend, id, &ignored);
                memmove(c->groups + container_group_index(c, id),
                        c->groups + container_group_index(c, id) + 1,
                        (c->n_groups - container_group_index(c, id) - 1) * sizeof(unsigned));
                c->n_groups--;
                return r;
        }

        g->container = c;
        log_event(&(LogEvent) { LOG_MESSAGE_GROUP_ATTACHED, .container = c->id, .label = c->label, .uid = &c->uid, .group = &id }, "Container %" PRIu64 " (%s, uid %u): attached VFIO group %u.", c->id, c->label, c->uid, id);

        (void) state_save_container(c);
        (void) container_dbus_emit_changed(c, CONTAINER_PROPERTY_GROUPS | CONTAINER_PROPERTY_DMA_AVAILABLE |
                                              CONTAINER_PROPERTY_IOVA_RANGES |
                                              CONTAINER_PROPERTY_PAGE_SIZES |
                                              (c->n_groups == 1 ? CONTAINER_PROPERTY_BALLOON_INHIBITED : 0));
        (void) group_dbus_emit_changed(g);
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

        r = b->backend->ops->container_detach_group(c->backend, id, e);
        if (r == -EBUSY)
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "Device fds of VFIO group %u are still open; close every copy of "
                                        "them before detaching the group.", id);
        if (r < 0)
                return r;

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
                (void) group_dbus_emit_changed(g);
        }
        log_event(&(LogEvent) { LOG_MESSAGE_GROUP_DETACHED, .container = c->id, .label = c->label, .uid = &c->uid, .group = &id }, "Container %" PRIu64 " (%s, uid %u): detached VFIO group %u.", c->id, c->label, c->uid, id);

        (void) state_save_container(c);
        (void) container_dbus_emit_changed(c, CONTAINER_PROPERTY_GROUPS | CONTAINER_PROPERTY_DMA_AVAILABLE |
                                              CONTAINER_PROPERTY_IOVA_RANGES |
                                              CONTAINER_PROPERTY_PAGE_SIZES |
                                              (c->n_groups == 0 ? CONTAINER_PROPERTY_BALLOON_INHIBITED : 0) |
                                              (tracking_gone ? CONTAINER_PROPERTY_DIRTY_TRACKING : 0));
        broker_balloon_inhibitors_changed(b, -1);
        return 0;
}

/* The group of a device that this container may use. */
static int container_device_group(Container *c, const char *device, Group **ret, BrokerError *e) {
        Group *g;

        g = broker_find_group_of_device(c->broker, device);
        if (!g)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE,
                                        "There is no device \"%s\" in any VFIO group on this host.", device);
        if (g->container != c)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE,
                                        "Device %s is in VFIO group %u, which is not attached to this "
                                        "container; AttachGroup(%u) first.", device, g->id, g->id);
        *ret = g;
        return 0;
}

int container_open_device(Container *c, const char *device, BrokerError *e) {
        Group *g = NULL;
        int r;

        r = container_device_group(c, device, &g, e);
        if (r < 0)
                return r;

        int fd = c->broker->backend->ops->container_open_device(c->backend, g->id, device, e);
        if (fd >= 0)
                /* The sim's device ends must survive a restart to keep the group busy. */
                (void) state_save_container(c);
        return fd;
}

static uint64_t lowest_bit(uint64_t x) {
        return x & -x;
}

/* Whether [first, last] lies inside one usable IOVA range. */
bool container_iova_usable(const Container *c, uint64_t first, uint64_t last) {
        for (size_t i = 0; i < c->iommu.n_ranges; i++)
                if (first >= c->iommu.ranges[i].first && last <= c->iommu.ranges[i].last)
                        return true;
        return false;
}

int container_check_map(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                        uint64_t granule, MemoryFileInfo *ret_info, BrokerError *e) {
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

        r = memory_check_fd(fd, flags, ret_info, e);
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

static int container_map_internal(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova,
                                  uint32_t flags, BrokerError *e) {
        MemoryFileInfo info;
        _cleanup_free_ Mapping *m = NULL;
        uint64_t vaddr;
        int r;

        r = container_check_map(c, fd, offset, size, iova, flags, 0, &info, e);
        if (r < 0)
                return r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        mapping_table_node_init(&m->node, iova, size);
        m->offset = offset;
        m->flags = flags;

        r = quota_charge(c->broker, c->uid, 0, 1, size, e);
        if (r < 0)
                return r;

        r = memory_pool_acquire(c->memory, fd, &info, offset, size, flags, &m->region, &vaddr, e);
        if (r < 0) {
                quota_release(c->broker, c->uid, 0, 1, size);
                return r;
        }

        r = c->broker->backend->ops->container_map(c->backend, vaddr, iova, size, flags, e);
        if (r < 0) {
                quota_release(c->broker, c->uid, 0, 1, size);
                memory_pool_release(c->memory, m->region);
                if (r == -ENOSPC)
                        return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                                "The kernel's limit of DMA mappings per container is reached "
                                                "(%zu mappings, see DmaAvailable); merge mappings or unmap some "
                                                "first.",
                                                container_n_mappings(c));
                return r;
        }

        r = mapping_table_insert(&c->mappings, &m->node, NULL);
        assert(r == 0); /* checked above */
        (void) r;
        TAKE_PTR(m);
        return 0;
}

int container_map(Container *c, int fd, uint64_t offset, uint64_t size, uint64_t iova, uint32_t flags,
                  BrokerError *e) {
        int r = container_map_internal(c, fd, offset, size, iova, flags, e);
        if (r < 0)
                return r;
        (void) state_save_container(c);
        (void) container_dbus_emit_changed(c, CONTAINER_PROPERTY_MAPPINGS | CONTAINER_PROPERTY_MAPPED_BYTES |
                                                      CONTAINER_PROPERTY_DMA_AVAILABLE);
        return 0;
}

/* Removes every mapping inside the range from the kernel and the table; the mappings themselves (their
 * memory, and so the daemon's address) are handed to the caller in *removed, their quota released. */
static int container_unmap_internal(Container *c, uint64_t iova, uint64_t size, bool regions, uint64_t *dirty_bitmap,
                                    Mapping ***removed, size_t *n_removed, BrokerError *e) {
        MappingTableNode *first, *last_node, *node, *next, *dfirst;
        uint64_t last, unmapped = 0, expected = 0;
        int r;

        if (size == 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Unmap size must not be 0.");
        if (iova + (size - 1) < iova)
                return broker_error_set(e, BROKER_ERROR_OUT_OF_RANGE,
                                        "IOVA 0x%" PRIx64 " + size 0x%" PRIx64 " wraps around the address space.",
                                        iova, size);
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

        for (node = first; node && node->first <= last; node = mapping_table_next(node))
                expected += mapping_table_node_size(node);

        if (dirty_bitmap)
                r = c->broker->backend->ops->container_unmap_dirty(c->backend, iova, size, align, dirty_bitmap,
                                                                   &unmapped, e);
        else
                r = c->broker->backend->ops->container_unmap(c->backend, iova, size, &unmapped, e);
        if (r < 0)
                return r;
        if (unmapped != expected)
                log_warning("Container %" PRIu64 ": the backend unmapped 0x%" PRIx64 " bytes in [0x%" PRIx64
                            ", 0x%" PRIx64 "], expected 0x%" PRIx64 ".", c->id, unmapped, iova, last, expected);

        for (node = first; node && node->first <= last; node = next) {
                Mapping **a = realloc(*removed, (*n_removed + 1) * sizeof(Mapping *));
                next = mapping_table_next(node);
                mapping_table_remove(&c->mappings, node);
                quota_release(c->broker, c->uid, 0, 1, mapping_table_node_size(node));
                if (!a) {
                        /* Cannot keep it for a rollback; it is unmapped anyway. */
                        memory_pool_release(c->memory, container_of(node, Mapping, node)->region);
                        free(container_of(node, Mapping, node));
                        continue;
                }
                *removed = a;
                a[(*n_removed)++] = container_of(node, Mapping, node);
        }
        return 0;
}

static void mappings_release(Container *c, Mapping **l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                memory_pool_release(c->memory, l[i]->region);
                free(l[i]);
        }
        free(l);
}

/* After an Unmap: the memory goes, the regions inside the range go, and everybody hears of it. */
static void unmap_done(Container *c, Mapping **removed, size_t n_removed, uint64_t iova, uint64_t size) {
        bool regions;

        mappings_release(c, removed, n_removed);
        regions = container_discardable_remove(c, iova, iova + (size - 1));
        (void) state_save_container(c);
        (void) container_dbus_emit_changed(c, CONTAINER_PROPERTY_MAPPINGS | CONTAINER_PROPERTY_MAPPED_BYTES |
                                                      CONTAINER_PROPERTY_DMA_AVAILABLE |
                                                      (regions ? CONTAINER_PROPERTY_DISCARDABLE : 0));
}

int container_unmap(Container *c, uint64_t iova, uint64_t size, BrokerError *e) {
        Mapping **removed = NULL;
        size_t n_removed = 0;
        int r;

        r = container_unmap_internal(c, iova, size, true, NULL, &removed, &n_removed, e);
        if (r < 0)
                return r;
        unmap_done(c, removed, n_removed, iova, size);
        return 0;
}

/* --- dirty page tracking --- */

int container_set_dirty_tracking(Container *c, bool start, BrokerError *e) {
        int r;

        if (c->n_groups == 0)
                return broker_error_set(e, BROKER_ERROR_NO_GROUPS,
                                        "The container has no VFIO group attached, so there is no IOMMU to track "
                                        "dirty pages in; AttachGroup() first.");
        if (c->dirty_tracking == start)
                return 0; /* as the kernel: starting twice is starting once */

        r = c->broker->backend->ops->container_dirty_tracking(c->backend, start, e);
        if (r < 0)
                return r;
        c->dirty_tracking = start;
        log_info("Container %" PRIu64 " (%s, uid %u): dirty page tracking %s.", c->id, c->label, c->uid,
                 start ? "started" : "stopped");
        (void) state_save_container(c);
        (void) container_dbus_emit_changed(c, CONTAINER_PROPERTY_DIRTY_TRACKING);
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

        r = c->broker->backend->ops->container_dirty_bitmap(c->backend, iova, size, page_size, bitmap, e);
        if (r < 0)
                return r;
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
        unmap_done(c, removed, n_removed, iova, size);

        /* The mappings are gone whatever happens now; a write that fails (the VMM truncated the file
         * meanwhile) loses only the report, and says so. */
        r = memory_write(fd, bitmap, bytes, fd_offset, e);
        if (r < 0)
                return r;
        if (ret_dirty)
                *ret_dirty = bitmap_count(bitmap, bytes);
        return 0;
}

/* --- PCI hot reset --- */

int container_hot_reset(Container *c, const char *device, BrokerError *e) {
        Broker *b = c->broker;
        _cleanup_free_ unsigned *groups = NULL;
        _cleanup_free_ BackendContainer **owners = NULL;
        _cleanup_free_ char *blocked = NULL;
        size_t n = 0, blocked_len = 0;
        FILE *f;
        Group *g = NULL;
        int r;

        r = container_device_group(c, device, &g, e);
        if (r < 0)
                return r;

        r = b->backend->ops->container_hot_reset_groups(c->backend, g->id, device, &groups, &n, e);
        if (r < 0)
                return r;

        owners = calloc(n + 1, sizeof(BackendContainer *));
        f = open_memstream(&blocked, &blocked_len);
        if (!owners || !f) {
                if (f)
                        fclose(f);
                return -ENOMEM;
        }
        /* The kernel resets only with the fd of every group the reset touches; the broker lends the
         * fds of groups that the same owner holds, never anybody else's. */
        for (size_t i = 0; i < n; i++) {
                Group *o = broker_find_group(b, groups[i]);
                if (o && o->container && strcmp(o->container->owner, c->owner) == 0) {
                        owners[i] = o->container->backend;
                        continue;
                }
                fprintf(f, "%s%u (%s)", ftell(f) > 0 ? ", " : "", groups[i],
                        !o ? "not a VFIO group the broker knows" :
                        o->container ? "attached to another owner's container" : "not attached to a container");
        }
        fclose(f);
        if (blocked && blocked[0])
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "A hot reset of %s also resets the devices of VFIO groups %s; attach "
                                        "each of them to a container of yours first.", device, blocked);

        r = b->backend->ops->container_hot_reset(c->backend, g->id, device, owners, groups, n, e);
        if (r < 0)
                return r;
        log_info("Container %" PRIu64 " (%s, uid %u): PCI hot reset of %s (%zu groups).", c->id, c->label,
                 c->uid, device, n);
        return 0;
}

int container_update(Container *c, const UpdateUnmap *unmaps, size_t n_unmaps, const int *fds, size_t n_fds,
                     const UpdateMap *maps, size_t n_maps, BrokerError *e) {
        Mapping **removed = NULL;
        size_t n_removed = 0, n_done = 0;
        BrokerError inner = BROKER_ERROR_INIT;
        int r = 0;

        /* Malformed requests are refused before anything moves. */
        for (size_t i = 0; i < n_maps; i++)
                if (maps[i].memory >= n_fds)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                                "Map #%zu names memory fd #%" PRIu32 ", but %zu fds were passed.",
                                                i, maps[i].memory, n_fds);

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
                r = container_map_internal(c, fds[m->memory], m->offset, m->size, m->iova, m->flags, &inner);
                if (r < 0) {
                        if (inner.code == BROKER_ERROR_KERNEL)
                                broker_error_set_errno(e, r, "Map #%zu: %s; nothing was changed", n_done, inner.message);
                        else
                                broker_error_set(e, inner.code == BROKER_ERROR_NONE ? BROKER_ERROR_INVALID_ARGS :
                                                 inner.code, "Map #%zu: %s Nothing was changed.", n_done, inner.message);
                        goto rollback;
                }
        }

        mappings_release(c, removed, n_removed);
        (void) state_save_container(c);
        if (n_unmaps > 0 || n_maps > 0)
                (void) container_dbus_emit_changed(c, CONTAINER_PROPERTY_MAPPINGS | CONTAINER_PROPERTY_MAPPED_BYTES |
                                                      CONTAINER_PROPERTY_DMA_AVAILABLE);
        return 0;

rollback:
        /* All or nothing: the maps made so far go, the mappings removed so far come back. */
        for (size_t i = n_done; i-- > 0;) {
                Mapping **undo = NULL;
                size_t n_undo = 0;
                if (container_unmap_internal(c, maps[i].iova, maps[i].size, false, NULL, &undo, &n_undo, NULL) >= 0)
                        mappings_release(c, undo, n_undo);
        }
        for (size_t i = n_removed; i-- > 0;) {
                Mapping *m = removed[i];
                uint64_t size = mapping_table_node_size(&m->node);
                if (c->broker->backend->ops->container_map(c->backend, memory_region_vaddr(m->region, m->offset),
                                                           m->node.first, size, m->flags, NULL) < 0) {
                        log_error("Container %" PRIu64 ": cannot restore mapping [0x%" PRIx64 ", 0x%" PRIx64
                                  "] during a rollback; it is gone.", c->id, m->node.first, m->node.last);
                        memory_pool_release(c->memory, m->region);
                        free(m);
                        continue;
                }
                (void) quota_charge_force(c->broker, c->uid, 0, 1, size);
                (void) mapping_table_insert(&c->mappings, &m->node, NULL);
        }
        free(removed);
        return r;
}

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
        qsort(c->groups, c->n_groups, sizeof(unsigned), unsigned_compare);
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
        uint64_t vaddr;
        int r;

        if (size == 0 || iova + (size - 1) < iova || (flags & ~(BROKER_MAP_READ | BROKER_MAP_WRITE)) || !flags)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "Malformed mapping in the state.");
        if (mapping_table_first_intersecting(&c->mappings, iova, iova + (size - 1)))
                return broker_error_set(e, BROKER_ERROR_OVERLAP, "Overlapping mappings in the state.");

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        mapping_table_node_init(&m->node, iova, size);
        m->offset = offset;
        m->flags = flags;

        r = memory_pool_acquire_id(c->memory, region, offset, size, &m->region, &vaddr, e);
        if (r < 0)
                return r;
        r = c->broker->backend->ops->container_restore_mapping(c->backend, vaddr, iova, size, flags, e);
        if (r < 0) {
                memory_pool_release(c->memory, m->region);
                return r;
        }
        r = quota_charge_force(c->broker, c->uid, 0, 1, size);
        if (r < 0) {
                memory_pool_release(c->memory, m->region);
                return r;
        }
        r = mapping_table_insert(&c->mappings, &m->node, NULL);
        assert(r == 0);
        TAKE_PTR(m);
        return 0;
}
