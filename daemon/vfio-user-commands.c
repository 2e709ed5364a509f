/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* What each vfio-user command does (vfio-user-server-private.h). The message is parsed and validated
 * whole already (vfio-user-message.c); a handler calls the container's logic (DMA_MAP with an fd is
 * container_map(), exactly as D-Bus Map) or the backend's device, then replies. What the client asked
 * wrongly or the device refused is an error reply; only running out of memory, or a reply that cannot
 * be sent, ends the client's session. */

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "vfio-user-server-private.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))

static int handle_version(VfioUserClient *cl, const VfioUserRequest *req) {
        Container *c = cl->server->container;
        _cleanup_free_ char *json = NULL;
        _cleanup_free_ uint8_t *reply = NULL;
        VfioUserVersion v = { .major = VFIO_USER_MAJOR, .minor = MIN(req->version.minor, VFIO_USER_MINOR) };
        uint64_t pgsizes = c->n_groups > 0 && c->iommu.page_sizes ? c->iommu.page_sizes : VFIO_USER_DEFAULT_PGSIZES;
        uint32_t max_maps = MIN(container_dma_available(c), (uint32_t) VFIO_USER_DEFAULT_MAX_DMA_MAPS);
        size_t n;

        cl->capabilities = req->version.capabilities;
        json = vfio_user_version_reply_json(pgsizes, max_maps ? max_maps : 1);
        if (!json)
                return -ENOMEM;
        n = sizeof(v) + strlen(json) + 1;
        reply = malloc(n);
        if (!reply)
                return -ENOMEM;
        memcpy(reply, &v, sizeof(v));
        memcpy(reply + sizeof(v), json, n - sizeof(v));
        cl->negotiated = true;
        VFIO_USER_REPORT(cl->server, client_changed, false);
        log_debug("vfio-user %s: client speaks %u.%u, max_msg_fds %" PRIu32 "; replying %s", cl->server->device,
                  req->version.major, req->version.minor, cl->capabilities.max_msg_fds, json);
        return vfio_user_client_reply(cl, reply, n, -EBADF);
}

static int handle_dma_map(VfioUserClient *cl, const VfioUserRequest *req) {
        const VfioUserDmaMap *m = &req->dma_map;
        Container *c = cl->server->container;
        BrokerError e = BROKER_ERROR_INIT;
        MappingTableNode *conflict = NULL;
        _cleanup_free_ VfioUserDma *d = NULL;
        int r;

        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        mapping_table_node_init(&d->node, m->address, m->size);
        if (mapping_table_first_intersecting(&cl->dma, d->node.first, d->node.last)) {
                log_debug("vfio-user %s: DMA_MAP 0x%" PRIx64 "+0x%" PRIx64 " overlaps an earlier one.",
                          cl->server->device, m->address, m->size);
                return vfio_user_client_reply_error(cl, EEXIST);
        }

        /* In the client's table, and reported, before the container maps it: the mapping commits with
         * the entry that names it as the client's (and a log compaction meanwhile sees both). */
        d->mapped = req->n_fds == 1;
        r = mapping_table_insert(&cl->dma, &d->node, &conflict);
        assert(r == 0); /* checked above */
        (void) r;
        VfioUserDmaInfo info = vfio_user_dma_info(d);
        VFIO_USER_REPORT(cl->server, dma_added, &info);

        if (d->mapped) {
                /* Exactly as D-Bus Map: the same checks, errors, quota, pinning and notifications. */
                r = container_map(c, cl->fds[0], m->offset, m->size, m->address, m->flags, &e);
                if (r < 0) {
                        log_info("vfio-user %s: DMA_MAP 0x%" PRIx64 "+0x%" PRIx64 " refused: %s", cl->server->device,
                                 m->address, m->size, e.message[0] ? e.message : strerror(-r));
                        mapping_table_remove(&cl->dma, &d->node);
                        VFIO_USER_REPORT(cl->server, dma_removed, &info);
                        return vfio_user_client_reply_error(cl, r);
                }
        } else if (!cl->warned_unmapped) {
                log_notice("vfio-user %s: client pid %d sent DMA_MAP 0x%" PRIx64 "+0x%" PRIx64 " without an fd "
                           "(anonymous memory, e.g. QEMU's ROMs without -machine aux-ram-share=on): acknowledged "
                           "but not mapped in the IOMMU, device DMA there faults. Logged once per client.",
                           cl->server->device, (int) cl->pid, m->address, m->size);
                cl->warned_unmapped = true;
                VFIO_USER_REPORT(cl->server, client_changed, false);
        }

        TAKE_PTR(d);
        return vfio_user_client_reply(cl, NULL, 0, -EBADF);
}

static int handle_dma_unmap(VfioUserClient *cl, const VfioUserRequest *req) {
        const VfioUserDmaUnmap *u = &req->dma_unmap;
        MappingTableNode *node, *next;
        uint64_t first = 0, last = UINT64_MAX;
        VfioUserDmaUnmap reply = *u;

        if (!(u->flags & VFIO_USER_DMA_UNMAP_FLAG_ALL)) {
                first = u->address;
                last = u->address + (u->size - 1);
                /* The kernel's type1 rule, which QEMU's listener is written for: a range may hold whole
                 * mappings only. A range that holds none removes nothing, as in the kernel. */
                node = mapping_table_find(&cl->dma, first);
                if (node && node->first < first)
                        return vfio_user_client_reply_error(cl, EINVAL);
                node = mapping_table_find(&cl->dma, last);
                if (node && node->last > last)
                        return vfio_user_client_reply_error(cl, EINVAL);
        }

        for (node = mapping_table_first_intersecting(&cl->dma, first, last); node && node->first <= last; node = next) {
                next = mapping_table_next(node);
                vfio_user_client_dma_drop(cl, container_of(node, VfioUserDma, node), true);
        }
        reply.argsz = sizeof(reply);
        return vfio_user_client_reply(cl, &reply, sizeof(reply), -EBADF);
}

static int handle_device_info(VfioUserClient *cl, const VfioUserRequest *req) {
        BackendDevice *dev = cl->server->dev;
        BackendDeviceInfo info;
        VfioUserDeviceInfo reply;
        int r;

        r = dev->ops->get_info(dev, &info);
        if (r < 0)
                return vfio_user_client_reply_error(cl, r);
        reply = (VfioUserDeviceInfo) { sizeof(reply), info.flags, info.num_regions, info.num_irqs };
        return vfio_user_client_reply(cl, &reply, sizeof(reply), -EBADF);
}

static int handle_region_info(VfioUserClient *cl, const VfioUserRequest *req) {
        BackendDevice *dev = cl->server->dev;
        BackendRegionInfo info;
        VfioUserRegionInfo reply;
        _cleanup_free_ uint8_t *buf = NULL;
        size_t full;
        int r;

        r = dev->ops->region_info(dev, req->region_info.index, &info);
        if (r < 0)
                return vfio_user_client_reply_error(cl, r);

        reply = (VfioUserRegionInfo) {
                .argsz = sizeof(reply),
                .flags = info.flags & (VFIO_USER_REGION_INFO_FLAG_READ | VFIO_USER_REGION_INFO_FLAG_WRITE),
                .index = req->region_info.index,
                .size = info.size,
        };
        if (!(info.flags & VFIO_USER_REGION_INFO_FLAG_MMAP) || info.mmap_fd < 0 || info.n_areas == 0) {
                backend_region_info_done(&info);
                return vfio_user_client_reply(cl, &reply, sizeof(reply), -EBADF);
        }

        /* An mmap-able BAR: the fd, its offset there, and which parts may be mapped. */
        full = sizeof(reply) + sizeof(VfioUserCapSparseMmap) + info.n_areas * sizeof(VfioUserSparseMmapArea);
        reply.flags |= VFIO_USER_REGION_INFO_FLAG_MMAP | VFIO_USER_REGION_INFO_FLAG_CAPS;
        reply.offset = info.mmap_offset;
        reply.argsz = (uint32_t) full;
        if (req->region_info.argsz < full) {
                /* As the kernel: the client learns the size it needs and asks again (QEMU does); the fd
                 * comes with the full answer only, so a retry leaks nothing. Unlike the kernel, without
                 * the CAPS flag: QEMU's vfio-user client refuses CAPS with no capability offset in the
                 * short answer (hw/vfio-user/device.c checks cap_offset before it retries). */
                reply.flags &= ~VFIO_USER_REGION_INFO_FLAG_CAPS;
                backend_region_info_done(&info);
                return vfio_user_client_reply(cl, &reply, sizeof(reply), -EBADF);
        }

        buf = calloc(1, full);
        if (!buf) {
                backend_region_info_done(&info);
                return -ENOMEM;
        }
        reply.cap_offset = sizeof(reply);
        memcpy(buf, &reply, sizeof(reply));
        VfioUserCapSparseMmap cap = {
                .header = { .id = VFIO_USER_REGION_INFO_CAP_SPARSE_MMAP, .version = 1, .next = 0 },
                .nr_areas = (uint32_t) info.n_areas,
        };
        memcpy(buf + sizeof(reply), &cap, sizeof(cap));
        for (size_t i = 0; i < info.n_areas; i++) {
                VfioUserSparseMmapArea a = { info.areas[i].offset, info.areas[i].size };
                memcpy(buf + sizeof(reply) + sizeof(cap) + i * sizeof(a), &a, sizeof(a));
        }
        r = vfio_user_client_reply(cl, buf, full, info.mmap_fd);
        backend_region_info_done(&info);
        return r;
}

static int handle_irq_info(VfioUserClient *cl, const VfioUserRequest *req) {
        BackendDevice *dev = cl->server->dev;
        BackendIrqInfo info;
        VfioUserIrqInfo reply;
        int r;

        r = dev->ops->irq_info(dev, req->irq_info.index, &info);
        if (r < 0)
                return vfio_user_client_reply_error(cl, r);
        reply = (VfioUserIrqInfo) { sizeof(reply), info.flags, req->irq_info.index, info.count };
        return vfio_user_client_reply(cl, &reply, sizeof(reply), -EBADF);
}

static int handle_set_irqs(VfioUserClient *cl, const VfioUserRequest *req) {
        const VfioUserIrqSet *set = &req->irq_set.set;
        BackendDevice *dev = cl->server->dev;
        int r;

        r = dev->ops->set_irqs(dev, set->flags, set->index, set->start, set->count,
                               req->n_fds > 0 ? cl->fds : NULL, req->irq_set.bools);
        if (r < 0) {
                log_debug_errno(r, "vfio-user %s: SET_IRQS index %" PRIu32 " flags 0x%" PRIx32 " refused: %m",
                                cl->server->device, set->index, set->flags);
                return vfio_user_client_reply_error(cl, r);
        }
        if ((set->flags & VFIO_USER_IRQ_SET_DATA_EVENTFD) && req->n_fds > 0 && set->index < 32)
                cl->irq_indexes |= UINT32_C(1) << set->index;
        /* The device may hold a new eventfd (the sim's INTx): its fds go to the store before the reply. */
        VFIO_USER_REPORT(cl->server, client_changed, false);
        vfio_user_report_commit(cl->server, true);
        return vfio_user_client_reply(cl, NULL, 0, -EBADF);
}

static int handle_region_read(VfioUserClient *cl, const VfioUserRequest *req) {
        const VfioUserRegionAccess *a = &req->region.access;
        BackendDevice *dev = cl->server->dev;
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        if (a->count > cl->capabilities.max_data_xfer_size)
                return vfio_user_client_reply_error(cl, EINVAL);
        buf = malloc(sizeof(*a) + a->count);
        if (!buf)
                return -ENOMEM;
        r = dev->ops->region_read(dev, a->region, a->offset, buf + sizeof(*a), a->count);
        if (r < 0)
                return vfio_user_client_reply_error(cl, r);
        memcpy(buf, a, sizeof(*a));
        return vfio_user_client_reply(cl, buf, sizeof(*a) + a->count, -EBADF);
}

static int handle_region_write(VfioUserClient *cl, const VfioUserRequest *req) {
        const VfioUserRegionAccess *a = &req->region.access;
        BackendDevice *dev = cl->server->dev;
        int r;

        r = dev->ops->region_write(dev, a->region, a->offset, req->region.data, a->count);
        if (r < 0) {
                log_debug_errno(r, "vfio-user %s: REGION_WRITE region %" PRIu32 " offset 0x%" PRIx64 " refused: %m",
                                cl->server->device, a->region, a->offset);
                return vfio_user_client_reply_error(cl, r);
        }
        return vfio_user_client_reply(cl, a, sizeof(*a), -EBADF);
}

static int handle_reset(VfioUserClient *cl, const VfioUserRequest *req) {
        BackendDevice *dev = cl->server->dev;
        int r;

        r = dev->ops->reset(dev);
        if (r < 0)
                return vfio_user_client_reply_error(cl, r);
        return vfio_user_client_reply(cl, NULL, 0, -EBADF);
}

int vfio_user_command_handle(VfioUserClient *cl, const VfioUserRequest *req) {
        switch (req->header.command) {
        case VFIO_USER_VERSION:                return handle_version(cl, req);
        case VFIO_USER_DMA_MAP:                return handle_dma_map(cl, req);
        case VFIO_USER_DMA_UNMAP:              return handle_dma_unmap(cl, req);
        case VFIO_USER_DEVICE_GET_INFO:        return handle_device_info(cl, req);
        case VFIO_USER_DEVICE_GET_REGION_INFO: return handle_region_info(cl, req);
        case VFIO_USER_DEVICE_GET_IRQ_INFO:    return handle_irq_info(cl, req);
        case VFIO_USER_DEVICE_SET_IRQS:        return handle_set_irqs(cl, req);
        case VFIO_USER_REGION_READ:            return handle_region_read(cl, req);
        case VFIO_USER_REGION_WRITE:           return handle_region_write(cl, req);
        case VFIO_USER_DEVICE_RESET:           return handle_reset(cl, req);
        default:
                assert(false); /* the parser refuses every other command */
                return -EOPNOTSUPP;
        }
}
