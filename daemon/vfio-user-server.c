/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The vfio-user face (see vfio-user-server.h). Longer than 600 lines: the listener, the one client's
 * non-blocking framing with fds, the ten command handlers and the session's hand-over to the next
 * instance all work on the client's state (its message, its pending reply, its DMA table, where it is
 * in the stream); parsing lives apart in vfio-user-message.c already, and splitting the rest off would
 * only move that structure into a header of its own. */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backend-device.h"
#include "group.h"
#include "log.h"
#include "message-ids.h"
#include "mapping-table.h"
#include "vfio-user-message.h"
#include "vfio-user-server.h"

/* Messages handled per wakeup before the loop gets a turn: a client that pipelines without end must
 * not starve the bus or the other clients. */
#define MESSAGES_PER_WAKEUP 64

typedef struct VfioUserClient VfioUserClient;

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* One DMA_MAP of the client. With an fd it is a mapping of the container too; without one it is only
 * remembered, so that its DMA_UNMAP matches (the protocol's DMA_READ/WRITE fallback cannot serve a
 * physical device, which DMAs without asking). */
typedef struct VfioUserDma {
        MappingTableNode node;
        bool mapped;
} VfioUserDma;

struct VfioUserClient {
        VfioUserServer *server;
        int fd;
        sd_event_source *source;
        uid_t uid;
        pid_t pid;
        uint32_t serial; /* per server, never 0 */

        bool negotiated;
        bool warned_unmapped; /* logged once that DMA_MAP without fd is not mapped */
        VfioUserCapabilities capabilities;
        uint32_t irq_indexes; /* bit per IRQ index that got eventfds; disabled on disconnect */

        /* The message being received. */
        VfioUserHeader header;
        size_t header_have;
        uint8_t *payload;
        size_t payload_have;
        int fds[VFIO_USER_SERVER_MAX_MSG_FDS];
        size_t n_fds;

        /* The reply being sent; nothing is read while it is pending. */
        uint8_t *out;
        size_t out_size, out_sent;
        int out_fd; /* borrowed from the device, sent with the first byte */

        MappingTable dma;
};

#define SESSION_MAGIC "vfbrvus1"

/* Where the server is in its client's stream, in a memfd that is kept in the fd store with the session:
 * busy holds the client's serial from the moment the first byte of a message may be taken off the
 * socket until its reply is sent whole (0 between messages). A process dies between two instructions,
 * never inside a store, so after a crash the next instance knows whether the stream is still at a
 * message boundary (the client is taken back) or not (it is disconnected): it never needs to guess
 * whether a message was half handled. Two stores per message, no system call. */
typedef struct VfioUserSessionPage {
        char magic[8];
        uint32_t busy;
} VfioUserSessionPage;

struct VfioUserServer {
        Container *container;
        VfioUserServer *next;
        uint32_t id;
        char *device;
        BackendDevice *dev;
        int listen_fd;
        sd_event_source *listen_source;
        VfioUserClient *client;
        uint32_t last_serial;

        int session_fd;
        VfioUserSessionPage *page;

        bool reported;      /* the watch heard of a change that the request's end must commit */
        char **stored_fds;  /* the state store's (vfio_user_server_stored_fds()) */
};

/* The face's own state, one per broker: the userdata of its BrokerObserver. */
typedef struct VfioUserFace {
        const VfioUserWatch *watch;
        void *userdata;
        uint32_t last_id;
} VfioUserFace;

static VfioUserFace *face_of(Broker *b);

/* The watch, unless the daemon hands over: then the session is left as it is for the next instance. */
static const VfioUserWatch *watch_of(VfioUserServer *s, void **ret_userdata) {
        VfioUserFace *f = face_of(s->container->broker);

        if (!f || !f->watch || s->container->broker->handing_over)
                return NULL;
        *ret_userdata = f->userdata;
        s->reported = true;
        return f->watch;
}

#define REPORT(s, op, ...)                                                      \
        do {                                                                    \
                void *_u;                                                       \
                const VfioUserWatch *_w = watch_of((s), &_u);                   \
                if (_w && _w->op)                                               \
                        _w->op(_u, (s), ##__VA_ARGS__);                         \
        } while (false)

/* The end of a request: what it reported is committed (before the reply). */
static void report_commit(VfioUserServer *s, bool fds) {
        void *u;
        const VfioUserWatch *w;

        if (!s->reported && !fds)
                return;
        w = watch_of(s, &u);
        s->reported = false;
        if (w && w->commit)
                w->commit(u, s, fds);
}

static void client_set_busy(VfioUserClient *cl, bool busy) {
        if (cl->server->page)
                __atomic_store_n(&cl->server->page->busy, busy ? cl->serial : 0, __ATOMIC_SEQ_CST);
}

const char *vfio_user_server_device(const VfioUserServer *s) {
        return s->device;
}

VfioUserServer *vfio_user_server_next(const VfioUserServer *s) {
        return s->next;
}

VfioUserServer *vfio_user_server_find(Container *c, const char *device) {
        for (VfioUserServer *s = c->vfio_user_servers; s; s = s->next)
                if (strcmp(s->device, device) == 0)
                        return s;
        return NULL;
}

static bool client_inside_message(const VfioUserClient *cl) {
        return cl->header_have > 0 || cl->n_fds > 0 || cl->out;
}

static void client_clear_message(VfioUserClient *cl) {
        for (size_t i = 0; i < cl->n_fds; i++)
                safe_close(cl->fds[i]);
        cl->n_fds = 0;
        cl->payload = mfree(cl->payload);
        cl->payload_have = 0;
        cl->header_have = 0;
}

static VfioUserDmaInfo dma_info(const VfioUserDma *d) {
        return (VfioUserDmaInfo) { d->node.first, mapping_table_node_size(&d->node), d->mapped };
}

/* Drops one of the client's DMA entries; with mapped, the container's mapping goes too. report: the
 * state store hears of it (not when the whole client goes without unmapping). */
static void client_dma_drop(VfioUserClient *cl, VfioUserDma *d, bool report) {
        Container *c = cl->server->container;
        VfioUserDmaInfo info = dma_info(d);

        mapping_table_remove(&cl->dma, &d->node);
        /* Reported before the unmap commits: no committed state has the mapping without the entry. */
        if (report)
                REPORT(cl->server, dma_removed, &info);
        if (d->mapped) {
                BrokerError e = BROKER_ERROR_INIT;
                int r = container_unmap(c, d->node.first, mapping_table_node_size(&d->node), &e);
                /* The owner may have unmapped it over D-Bus meanwhile: then there is nothing to do. */
                if (r < 0 && e.code != BROKER_ERROR_NOT_MAPPED)
                        log_warning("vfio-user %s: cannot drop the mapping at 0x%" PRIx64 ": %s", cl->server->device,
                                    d->node.first, e.message);
        }
        free(d);
}

/* Why a client goes: only a client leaving a container that stays takes its mappings out of it; when the
 * container itself goes (Close, the owner leaving, a hand-over to the next instance), its teardown or the
 * next instance deals with every mapping. */
typedef enum ClientEnd {
        CLIENT_END_UNMAP,
        CLIENT_END_KEEP_MAPPINGS,
} ClientEnd;

static void client_free_full(VfioUserClient *cl, const char *reason, ClientEnd end);

static void client_free(VfioUserClient *cl, const char *reason) {
        client_free_full(cl, reason, CLIENT_END_UNMAP);
}

static void client_free_full(VfioUserClient *cl, const char *reason, ClientEnd end) {
        VfioUserServer *s;
        MappingTableNode *node, *next;
        size_t unreported;

        if (!cl)
                return;
        s = cl->server;
        if (s->container->broker->handing_over)
                /* Not a disconnection: the socket stays open in the fd store for the next instance. */
                log_info("vfio-user %s: client pid %d left to the next instance.", s->device, (int) cl->pid);
        else
                log_event(&(LogEvent) { LOG_MESSAGE_VFIO_USER_DISCONNECTED, .container = s->container->id,
                                        .label = s->container->label, .uid = &cl->uid, .device = s->device,
                                        .reason = reason },
                          "vfio-user %s: client pid %d uid %u disconnected: %s", s->device, (int) cl->pid,
                          (unsigned) cl->uid, reason);

        unreported = end == CLIENT_END_KEEP_MAPPINGS ? mapping_table_size(&cl->dma) : 0;
        MAPPING_TABLE_FOREACH_SAFE(node, next, &cl->dma) {
                VfioUserDma *d = container_of(node, VfioUserDma, node);
                if (end == CLIENT_END_KEEP_MAPPINGS)
                        d->mapped = false;
                client_dma_drop(cl, d, end == CLIENT_END_UNMAP);
        }

        /* The protocol: the client's interrupt fds are closed, the device state is otherwise kept. Not
         * on a hand-over: the next instance serves the same client, whose eventfds stay wired. */
        for (uint32_t i = 0; i < 32 && !s->container->broker->handing_over; i++)
                if (cl->irq_indexes & (UINT32_C(1) << i)) {
                        int r = s->dev->ops->set_irqs(s->dev, VFIO_USER_IRQ_SET_DATA_NONE |
                                                      VFIO_USER_IRQ_SET_ACTION_TRIGGER, i, 0, 0, NULL, NULL);
                        if (r < 0)
                                log_warning_errno(r, "vfio-user %s: cannot release interrupt index %u: %m", s->device, i);
                }

        client_clear_message(cl);
        free(cl->out);
        sd_event_source_disable_unref(cl->source);
        safe_close(cl->fd);
        if (!s->container->broker->handing_over)
                client_set_busy(cl, false);
        s->client = NULL;
        REPORT(s, client_removed, unreported);
        free(cl);
        report_commit(s, true);
}

/* --- replies --- */

static int client_send(VfioUserClient *cl) {
        while (cl->out && cl->out_sent < cl->out_size) {
                struct iovec iov = { cl->out + cl->out_sent, cl->out_size - cl->out_sent };
                union {
                        struct cmsghdr cmsghdr;
                        uint8_t buf[CMSG_SPACE(sizeof(int))];
                } control = {};
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
                ssize_t n;

                if (cl->out_sent == 0 && cl->out_fd >= 0) {
                        struct cmsghdr *cmsg;

                        mh.msg_control = &control;
                        mh.msg_controllen = sizeof(control);
                        cmsg = CMSG_FIRSTHDR(&mh);
                        cmsg->cmsg_level = SOL_SOCKET;
                        cmsg->cmsg_type = SCM_RIGHTS;
                        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
                        memcpy(CMSG_DATA(cmsg), &cl->out_fd, sizeof(int));
                }
                n = sendmsg(cl->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return sd_event_source_set_io_events(cl->source, EPOLLOUT);
                        return -errno;
                }
                cl->out_sent += (size_t) n;
        }
        /* The reply is out whole: the stream is at a message boundary again. */
        if (cl->out)
                client_set_busy(cl, false);
        cl->out = mfree(cl->out);
        cl->out_size = cl->out_sent = 0;
        cl->out_fd = -EBADF;
        return sd_event_source_set_io_events(cl->source, EPOLLIN);
}

/* Queues the reply to the current message (nothing when the client asked for none). */
static int client_reply(VfioUserClient *cl, const void *payload, size_t size, int fd) {
        VfioUserHeader h = {
                .msg_id = cl->header.msg_id,
                .command = cl->header.command,
                .msg_size = (uint32_t) (sizeof(h) + size),
                .flags = VFIO_USER_FLAGS_TYPE_REPLY,
        };

        assert(!cl->out);
        /* What the message changed survives the daemon's death before the client hears of it. */
        report_commit(cl->server, false);
        if (cl->header.flags & VFIO_USER_FLAGS_NO_REPLY)
                return 0;
        cl->out = malloc(sizeof(h) + size);
        if (!cl->out)
                return -ENOMEM;
        memcpy(cl->out, &h, sizeof(h));
        if (size > 0)
                memcpy(cl->out + sizeof(h), payload, size);
        cl->out_size = sizeof(h) + size;
        cl->out_sent = 0;
        cl->out_fd = fd;
        return client_send(cl);
}

static int client_reply_error(VfioUserClient *cl, int error) {
        VfioUserHeader h = {
                .msg_id = cl->header.msg_id,
                .command = cl->header.command,
                .msg_size = sizeof(h),
                .flags = VFIO_USER_FLAGS_TYPE_REPLY | VFIO_USER_FLAGS_ERROR,
                .error_no = (uint32_t) (error < 0 ? -error : error),
        };

        assert(!cl->out);
        report_commit(cl->server, false);
        if (cl->header.flags & VFIO_USER_FLAGS_NO_REPLY)
                return 0;
        cl->out = malloc(sizeof(h));
        if (!cl->out)
                return -ENOMEM;
        memcpy(cl->out, &h, sizeof(h));
        cl->out_size = sizeof(h);
        cl->out_sent = 0;
        cl->out_fd = -EBADF;
        return client_send(cl);
}

/* --- commands --- */

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
        REPORT(cl->server, client_changed, false);
        log_debug("vfio-user %s: client speaks %u.%u, max_msg_fds %" PRIu32 "; replying %s", cl->server->device,
                  req->version.major, req->version.minor, cl->capabilities.max_msg_fds, json);
        return client_reply(cl, reply, n, -EBADF);
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
                return client_reply_error(cl, EEXIST);
        }

        /* In the client's table, and reported, before the container maps it: the mapping commits with
         * the entry that names it as the client's (and a log compaction meanwhile sees both). */
        d->mapped = req->n_fds == 1;
        r = mapping_table_insert(&cl->dma, &d->node, &conflict);
        assert(r == 0); /* checked above */
        (void) r;
        VfioUserDmaInfo info = dma_info(d);
        REPORT(cl->server, dma_added, &info);

        if (d->mapped) {
                /* Exactly as D-Bus Map: the same checks, errors, quota, pinning and notifications. */
                r = container_map(c, cl->fds[0], m->offset, m->size, m->address, m->flags, &e);
                if (r < 0) {
                        log_info("vfio-user %s: DMA_MAP 0x%" PRIx64 "+0x%" PRIx64 " refused: %s", cl->server->device,
                                 m->address, m->size, e.message[0] ? e.message : strerror(-r));
                        mapping_table_remove(&cl->dma, &d->node);
                        REPORT(cl->server, dma_removed, &info);
                        return client_reply_error(cl, r);
                }
        } else if (!cl->warned_unmapped) {
                log_notice("vfio-user %s: client pid %d sent DMA_MAP 0x%" PRIx64 "+0x%" PRIx64 " without an fd "
                           "(anonymous memory, e.g. QEMU's ROMs without -machine aux-ram-share=on): acknowledged "
                           "but not mapped in the IOMMU, device DMA there faults. Logged once per client.",
                           cl->server->device, (int) cl->pid, m->address, m->size);
                cl->warned_unmapped = true;
                REPORT(cl->server, client_changed, false);
        }

        TAKE_PTR(d);
        return client_reply(cl, NULL, 0, -EBADF);
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
                        return client_reply_error(cl, EINVAL);
                node = mapping_table_find(&cl->dma, last);
                if (node && node->last > last)
                        return client_reply_error(cl, EINVAL);
        }

        for (node = mapping_table_first_intersecting(&cl->dma, first, last); node && node->first <= last; node = next) {
                next = mapping_table_next(node);
                client_dma_drop(cl, container_of(node, VfioUserDma, node), true);
        }
        reply.argsz = sizeof(reply);
        return client_reply(cl, &reply, sizeof(reply), -EBADF);
}

static int handle_device_info(VfioUserClient *cl, const VfioUserRequest *req) {
        BackendDevice *dev = cl->server->dev;
        BackendDeviceInfo info;
        VfioUserDeviceInfo reply;
        int r;

        r = dev->ops->get_info(dev, &info);
        if (r < 0)
                return client_reply_error(cl, r);
        reply = (VfioUserDeviceInfo) { sizeof(reply), info.flags, info.num_regions, info.num_irqs };
        return client_reply(cl, &reply, sizeof(reply), -EBADF);
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
                return client_reply_error(cl, r);

        reply = (VfioUserRegionInfo) {
                .argsz = sizeof(reply),
                .flags = info.flags & (VFIO_USER_REGION_INFO_FLAG_READ | VFIO_USER_REGION_INFO_FLAG_WRITE),
                .index = req->region_info.index,
                .size = info.size,
        };
        if (!(info.flags & VFIO_USER_REGION_INFO_FLAG_MMAP) || info.mmap_fd < 0 || info.n_areas == 0) {
                backend_region_info_done(&info);
                return client_reply(cl, &reply, sizeof(reply), -EBADF);
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
                return client_reply(cl, &reply, sizeof(reply), -EBADF);
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
        r = client_reply(cl, buf, full, info.mmap_fd);
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
                return client_reply_error(cl, r);
        reply = (VfioUserIrqInfo) { sizeof(reply), info.flags, req->irq_info.index, info.count };
        return client_reply(cl, &reply, sizeof(reply), -EBADF);
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
                return client_reply_error(cl, r);
        }
        if ((set->flags & VFIO_USER_IRQ_SET_DATA_EVENTFD) && req->n_fds > 0 && set->index < 32)
                cl->irq_indexes |= UINT32_C(1) << set->index;
        /* The device may hold a new eventfd (the sim's INTx): its fds go to the store before the reply. */
        REPORT(cl->server, client_changed, false);
        report_commit(cl->server, true);
        return client_reply(cl, NULL, 0, -EBADF);
}

static int handle_region_read(VfioUserClient *cl, const VfioUserRequest *req) {
        const VfioUserRegionAccess *a = &req->region.access;
        BackendDevice *dev = cl->server->dev;
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        if (a->count > cl->capabilities.max_data_xfer_size)
                return client_reply_error(cl, EINVAL);
        buf = malloc(sizeof(*a) + a->count);
        if (!buf)
                return -ENOMEM;
        r = dev->ops->region_read(dev, a->region, a->offset, buf + sizeof(*a), a->count);
        if (r < 0)
                return client_reply_error(cl, r);
        memcpy(buf, a, sizeof(*a));
        return client_reply(cl, buf, sizeof(*a) + a->count, -EBADF);
}

static int handle_region_write(VfioUserClient *cl, const VfioUserRequest *req) {
        const VfioUserRegionAccess *a = &req->region.access;
        BackendDevice *dev = cl->server->dev;
        int r;

        r = dev->ops->region_write(dev, a->region, a->offset, req->region.data, a->count);
        if (r < 0) {
                log_debug_errno(r, "vfio-user %s: REGION_WRITE region %" PRIu32 " offset 0x%" PRIx64 " refused: %m",
                                cl->server->device, a->region, a->offset);
                return client_reply_error(cl, r);
        }
        return client_reply(cl, a, sizeof(*a), -EBADF);
}

static int handle_reset(VfioUserClient *cl, const VfioUserRequest *req) {
        BackendDevice *dev = cl->server->dev;
        int r;

        r = dev->ops->reset(dev);
        if (r < 0)
                return client_reply_error(cl, r);
        return client_reply(cl, NULL, 0, -EBADF);
}

/* Returns < 0 to disconnect the client, with *reason set. */
static int client_handle(VfioUserClient *cl, const char **reason, VfioUserProblem *p) {
        VfioUserRequest req;
        int r;

        r = vfio_user_request_parse(&cl->header, cl->payload, cl->payload_have, cl->n_fds, &req, p);
        if (r < 0 && p->fatal) {
                *reason = p->reason;
                return r;
        }
        if (!cl->negotiated && cl->header.command != VFIO_USER_VERSION) {
                *reason = "the first message must be VERSION";
                return -EPROTO;
        }
        if (cl->negotiated && cl->header.command == VFIO_USER_VERSION) {
                *reason = "VERSION sent twice";
                return -EPROTO;
        }
        if (r < 0) {
                log_debug("vfio-user %s: %s refused: %s", cl->server->device,
                          vfio_user_command_name(cl->header.command), p->reason);
                r = client_reply_error(cl, r);
        } else
                switch (req.header.command) {
                case VFIO_USER_VERSION:                r = handle_version(cl, &req); break;
                case VFIO_USER_DMA_MAP:                r = handle_dma_map(cl, &req); break;
                case VFIO_USER_DMA_UNMAP:              r = handle_dma_unmap(cl, &req); break;
                case VFIO_USER_DEVICE_GET_INFO:        r = handle_device_info(cl, &req); break;
                case VFIO_USER_DEVICE_GET_REGION_INFO: r = handle_region_info(cl, &req); break;
                case VFIO_USER_DEVICE_GET_IRQ_INFO:    r = handle_irq_info(cl, &req); break;
                case VFIO_USER_DEVICE_SET_IRQS:        r = handle_set_irqs(cl, &req); break;
                case VFIO_USER_REGION_READ:            r = handle_region_read(cl, &req); break;
                case VFIO_USER_REGION_WRITE:           r = handle_region_write(cl, &req); break;
                case VFIO_USER_DEVICE_RESET:           r = handle_reset(cl, &req); break;
                default:
                        assert(false); /* the parser refuses every other command */
                        r = -EOPNOTSUPP;
                }
        if (r < 0)
                *reason = r == -ENOMEM ? "out of memory" : "cannot send the reply";
        return r;
}

/* --- receiving --- */

/* Receives into buf, collecting fds into the message's. Returns bytes received, 0 at EOF, -EAGAIN, or
 * -EBADMSG with *reason when the client sends more fds than a message may carry. */
static ssize_t client_recv(VfioUserClient *cl, void *buf, size_t size, const char **reason) {
        union {
                struct cmsghdr cmsghdr;
                uint8_t buf[CMSG_SPACE(sizeof(int) * VFIO_USER_SERVER_MAX_MSG_FDS)];
        } control;
        struct iovec iov = { buf, size };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = sizeof(control) };
        bool overflow = false;
        ssize_t n;

        n = recvmsg(cl->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return errno == EINTR ? -EAGAIN : -errno;

        for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh); cmsg; cmsg = CMSG_NXTHDR(&mh, cmsg)) {
                size_t k;
                if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                        continue;
                k = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                        int fd;
                        memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
                        if (cl->n_fds < VFIO_USER_SERVER_MAX_MSG_FDS)
                                cl->fds[cl->n_fds++] = fd;
                        else {
                                safe_close(fd);
                                overflow = true;
                        }
                }
        }
        /* The kernel drops (closes) what did not fit in the control buffer and says so. */
        if (overflow || (mh.msg_flags & MSG_CTRUNC)) {
                *reason = "a message carries more fds than the 16 the broker accepts (max_msg_fds)";
                return -EBADMSG;
        }
        return n;
}

/* Returns 1 when a whole message is in, 0 when more is to come, < 0 (with *reason) to disconnect. */
static int client_read(VfioUserClient *cl, const char **reason, VfioUserProblem *p) {
        ssize_t n;
        int r;

        if (cl->header_have < sizeof(cl->header)) {
                bool starts = cl->header_have == 0 && cl->n_fds == 0;

                /* Busy before the first byte may leave the socket, idle again if none did. */
                if (starts)
                        client_set_busy(cl, true);
                n = client_recv(cl, (uint8_t *) &cl->header + cl->header_have, sizeof(cl->header) - cl->header_have,
                                reason);
                if (starts && n <= 0 && cl->n_fds == 0)
                        client_set_busy(cl, false);
                if (n == -EAGAIN)
                        return 0;
                if (n == 0) {
                        *reason = cl->header_have > 0 || cl->n_fds > 0 ? "connection closed inside a message header (truncated header)"
                                                                       : "the client closed the connection";
                        return -ECONNRESET;
                }
                if (n < 0) {
                        if (!*reason)
                                *reason = "receive failed";
                        return (int) n;
                }
                cl->header_have += (size_t) n;
                if (cl->header_have < sizeof(cl->header))
                        return 0;

                r = vfio_user_header_check(&cl->header, p);
                if (r < 0) {
                        *reason = p->reason;
                        return r;
                }
                if (cl->header.msg_size > sizeof(cl->header)) {
                        cl->payload = malloc(cl->header.msg_size - sizeof(cl->header));
                        if (!cl->payload) {
                                *reason = "out of memory";
                                return -ENOMEM;
                        }
                }
        }

        while (cl->payload_have < cl->header.msg_size - sizeof(cl->header)) {
                n = client_recv(cl, cl->payload + cl->payload_have,
                                cl->header.msg_size - sizeof(cl->header) - cl->payload_have, reason);
                if (n == -EAGAIN)
                        return 0;
                if (n == 0) {
                        *reason = "connection closed inside a message (its msg_size is larger than what was sent)";
                        return -ECONNRESET;
                }
                if (n < 0) {
                        if (!*reason)
                                *reason = "receive failed";
                        return (int) n;
                }
                cl->payload_have += (size_t) n;
        }
        return 1;
}

static int client_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        VfioUserClient *cl = userdata;
        const char *reason = NULL;
        VfioUserProblem p = {};
        int r;

        if (cl->out) {
                r = client_send(cl);
                if (r < 0) {
                        client_free(cl, "cannot send a reply (the client stopped reading or left)");
                        return 0;
                }
                if (cl->out)
                        return 0;
        }

        for (unsigned i = 0; i < MESSAGES_PER_WAKEUP && !cl->out; i++) {
                r = client_read(cl, &reason, &p);
                if (r == 0)
                        return 0;
                if (r < 0) {
                        if (r == -ECONNRESET && cl->header_have == 0 && cl->n_fds == 0)
                                client_free(cl, reason);
                        else {
                                log_warning("vfio-user %s: malformed message from pid %d, disconnecting: %s",
                                            cl->server->device, (int) cl->pid, reason);
                                client_free(cl, reason);
                        }
                        return 0;
                }
                r = client_handle(cl, &reason, &p);
                if (r < 0) {
                        log_warning("vfio-user %s: disconnecting pid %d: %s", cl->server->device, (int) cl->pid,
                                    reason);
                        client_free(cl, reason);
                        return 0;
                }
                client_clear_message(cl);
                if (!cl->out) /* handled and answered (or no answer asked for) */
                        client_set_busy(cl, false);
        }
        return 0;
}

/* A client on fd (taken, also on failure). */
static int client_new(VfioUserServer *s, int fd, uid_t uid, pid_t pid, uint32_t serial, VfioUserClient **ret) {
        VfioUserClient *cl;
        int r;

        cl = calloc(1, sizeof(*cl));
        if (!cl) {
                safe_close(fd);
                return -ENOMEM;
        }
        cl->server = s;
        cl->uid = uid;
        cl->pid = pid;
        cl->serial = serial;
        cl->out_fd = -EBADF;
        cl->dma = MAPPING_TABLE_INIT;
        r = sd_event_add_io(s->container->broker->event, &cl->source, fd, EPOLLIN, client_io, cl);
        if (r < 0) {
                safe_close(fd);
                free(cl);
                return r;
        }
        cl->fd = fd;
        s->client = cl;
        *ret = cl;
        return 0;
}

static int listen_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        VfioUserServer *s = userdata;
        Container *c = s->container;
        _cleanup_close_ int cfd = -EBADF;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        VfioUserClient *cl;
        int r;

        cfd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        log_warning_errno(-errno, "vfio-user %s: accept failed: %m", s->device);
                return 0;
        }
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                log_warning_errno(-errno, "vfio-user %s: cannot read the client's credentials: %m", s->device);
                return 0;
        }
        if (cred.uid != c->uid && cred.uid != 0) {
                log_warning("vfio-user %s: refusing client pid %d: uid %u is neither the container's (%u) nor root.",
                            s->device, (int) cred.pid, (unsigned) cred.uid, (unsigned) c->uid);
                return 0;
        }
        if (s->client) {
                /* The protocol has one client per connection and device; a second VMM learns at once,
                 * instead of waiting forever for its VERSION reply. */
                log_warning("vfio-user %s: refusing client pid %d: pid %d is being served.", s->device,
                            (int) cred.pid, (int) s->client->pid);
                return 0;
        }

        if (++s->last_serial == 0) /* serial 0 means "between messages" in the session page */
                s->last_serial = 1;
        r = client_new(s, TAKE_FD(cfd), cred.uid, cred.pid, s->last_serial, &cl);
        if (r < 0)
                return log_error_errno(r, "vfio-user %s: cannot watch the client: %m", s->device);
        log_event(&(LogEvent) { LOG_MESSAGE_VFIO_USER_CONNECTED, .container = s->container->id,
                                .label = s->container->label, .uid = &cl->uid, .device = s->device },
                  "vfio-user %s: client pid %d uid %u connected.", s->device, (int) cl->pid, (unsigned) cl->uid);
        /* Its socket goes to the fd store, so that a restart keeps the connection. */
        REPORT(s, client_changed, true);
        report_commit(s, true);
        return 0;
}

static int vfio_user_observe(Broker *b, VfioUserFace **ret);

static int check_listener(int fd, BrokerError *e) {
        struct stat st;
        int v;
        socklen_t len = sizeof(v);

        if (fstat(fd, &st) < 0)
                return broker_error_set_errno(e, -errno, "Cannot inspect the listener fd");
        if (!S_ISSOCK(st.st_mode))
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The listener is not a socket: pass a listening AF_UNIX SOCK_STREAM socket "
                                        "bound at a path the VMM connects to.");
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) < 0 || v != AF_UNIX)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The listener is not an AF_UNIX socket; vfio-user needs one to pass fds.");
        len = sizeof(v);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) < 0 || v != SOCK_STREAM)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The listener is not a SOCK_STREAM socket, as vfio-user clients expect.");
        len = sizeof(v);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0 || v != 1)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The socket is not listening: call listen() on it before passing it.");
        return 0;
}

static VfioUserSessionPage *session_map(int fd) {
        void *p = mmap(NULL, sizeof(VfioUserSessionPage), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        return p == MAP_FAILED ? NULL : p;
}

/* The server around a device already open: listen_fd and session_fd are taken, also on failure. */
static int server_start(Container *c, const char *device, uint32_t id, BackendDevice *dev, int listen_fd,
                        int session_fd, VfioUserServer **ret) {
        VfioUserServer *s;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s) {
                safe_close(listen_fd);
                safe_close(session_fd);
                return -ENOMEM;
        }
        s->container = c;
        s->id = id;
        s->dev = dev;
        s->listen_fd = listen_fd;
        s->session_fd = session_fd;
        s->device = strdup(device);
        s->page = session_map(session_fd);
        if (!s->device || !s->page) {
                r = -ENOMEM;
                goto fail;
        }
        r = sd_event_add_io(c->broker->event, &s->listen_source, listen_fd, EPOLLIN, listen_io, s);
        if (r < 0)
                goto fail;
        s->next = c->vfio_user_servers;
        c->vfio_user_servers = s;
        *ret = s;
        return 0;

fail:
        if (s->page)
                munmap(s->page, sizeof(VfioUserSessionPage));
        safe_close(s->session_fd);
        safe_close(s->listen_fd);
        free(s->device);
        free(s);
        return r;
}

int vfio_user_server_new(Container *c, const char *device, int listen_fd, VfioUserServer **ret, BrokerError *e) {
        _cleanup_close_ int fd = -EBADF, session = -EBADF;
        VfioUserServer *s;
        BackendDevice *dev = NULL;
        VfioUserFace *f;
        Group *g;
        int r, flags;

        r = check_listener(listen_fd, e);
        if (r < 0)
                return r;
        r = vfio_user_observe(c->broker, &f);
        if (r < 0)
                return broker_error_set_errno(e, r, "Cannot watch the container's removal");
        g = broker_find_group_of_device(c->broker, device);
        if (!g || g->container != c)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE,
                                        "Device %s is not in a group attached to this container; AttachGroup() "
                                        "its group first.", device);
        if (vfio_user_server_find(c, device))
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "Device %s is already served over vfio-user; StopVfioUser() it first.", device);

        /* The caller's fd is borrowed from the D-Bus message. O_NONBLOCK is on the open file, so the
         * caller's copy turns non-blocking too: it must not accept() on it anyway. */
        fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return broker_error_set_errno(e, -errno, "Cannot duplicate the listener fd");
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return broker_error_set_errno(e, -errno, "Cannot make the listener non-blocking");
        session = memfd_create("vfio-broker-vfio-user-session", MFD_CLOEXEC);
        if (session < 0 || ftruncate(session, sizeof(VfioUserSessionPage)) < 0)
                return broker_error_set_errno(e, -errno, "Cannot create the session's memory file");

        r = backend_container_get_device(c->backend, g->id, device, &dev);
        if (r < 0) {
                /* The backend's errno, worded for the VMM author: the group is attached, so what remains
                 * is a device that vanished or that the kernel will not open (held elsewhere). */
                if (r == -ENODEV || r == -ENOENT)
                        return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE, "Device %s is not in its group any "
                                                "more.", device);
                if (r == -EBUSY)
                        return broker_error_set(e, BROKER_ERROR_BUSY, "Device %s is in use outside the broker.",
                                                device);
                return broker_error_set_errno(e, r, "Cannot open device %s", device);
        }
        r = server_start(c, device, ++f->last_id, dev, TAKE_FD(fd), TAKE_FD(session), &s);
        if (r < 0) {
                backend_device_free(dev);
                return broker_error_set_errno(e, r, "Cannot watch the listener");
        }
        memcpy(s->page->magic, SESSION_MAGIC, sizeof(s->page->magic));

        log_info("Container %s: serving %s over vfio-user.", c->path, device);
        /* The listener, the device and the session page go to the fd store before the reply. */
        REPORT(s, server_added);
        report_commit(s, true);
        if (ret)
                *ret = s;
        return 0;
}

static VfioUserServer *server_free(VfioUserServer *s, ClientEnd end) {
        Container *c;

        if (!s)
                return NULL;
        c = s->container;
        for (VfioUserServer **p = &c->vfio_user_servers; *p; p = &(*p)->next)
                if (*p == s) {
                        *p = s->next;
                        break;
                }
        client_free_full(s->client, "the device is no longer served", end);
        REPORT(s, server_removed);
        sd_event_source_disable_unref(s->listen_source);
        safe_close(s->listen_fd);
        /* On a hand-over the fd store keeps a copy of the device fd: closing ours resets nothing. */
        backend_device_free(s->dev);
        if (s->page)
                munmap(s->page, sizeof(VfioUserSessionPage));
        safe_close(s->session_fd);
        if (c->broker->handing_over)
                log_info("Container %s: %s served over vfio-user is left to the next instance.", c->path, s->device);
        else
                log_info("Container %s: stopped serving %s over vfio-user.", c->path, s->device);
        strv_free(s->stored_fds);
        free(s->device);
        free(s);
        return NULL;
}

VfioUserServer *vfio_user_server_free(VfioUserServer *s) {
        return server_free(s, CLIENT_END_UNMAP);
}

/* --- restart --- */

Container *vfio_user_server_container(const VfioUserServer *s) {
        return s->container;
}

void vfio_user_server_info(const VfioUserServer *s, VfioUserSessionInfo *ret) {
        const VfioUserClient *cl = s->client;

        *ret = (VfioUserSessionInfo) { .id = s->id };
        snprintf(ret->device, sizeof(ret->device), "%s", s->device);
        if (!cl)
                return;
        ret->has_client = true;
        ret->client_serial = cl->serial;
        ret->uid = cl->uid;
        ret->pid = cl->pid;
        ret->negotiated = cl->negotiated;
        ret->warned_unmapped = cl->warned_unmapped;
        ret->capabilities = cl->capabilities;
        ret->irq_indexes = cl->irq_indexes;
}

int vfio_user_server_dma(const VfioUserServer *s, VfioUserDmaInfo **ret, size_t *ret_n) {
        const MappingTable *t = s->client ? &s->client->dma : NULL;
        size_t n = 0;

        *ret = calloc(t ? mapping_table_size(t) + 1 : 1, sizeof(VfioUserDmaInfo));
        if (!*ret)
                return -ENOMEM;
        for (MappingTableNode *node = t ? mapping_table_first(t) : NULL; node; node = mapping_table_next(node))
                (*ret)[n++] = dma_info(container_of(node, VfioUserDma, node));
        *ret_n = n;
        return 0;
}

int vfio_user_server_get_fds(VfioUserServer *s, BackendFd **ret, size_t *ret_n) {
        _cleanup_free_ BackendFd *dev = NULL;
        size_t n_dev = 0, n = 0;
        BackendFd *fds;
        int r;

        r = backend_device_get_fds(s->dev, &dev, &n_dev);
        if (r < 0)
                return r;
        fds = calloc(n_dev + 3, sizeof(BackendFd));
        if (!fds)
                return -ENOMEM;
        /* Sockets are polled: the store drops one whose peer is gone, as that client would be anyway. */
        fds[n++] = (BackendFd) { .name = "listen", .fd = s->listen_fd, .poll = true };
        fds[n++] = (BackendFd) { .name = "session", .fd = s->session_fd, .poll = false };
        if (s->client) {
                fds[n] = (BackendFd) { .fd = s->client->fd, .poll = true };
                snprintf(fds[n++].name, sizeof(fds[0].name), "client-%" PRIu32, s->client->serial);
        }
        for (size_t i = 0; i < n_dev; i++) {
                fds[n] = dev[i];
                snprintf(fds[n++].name, sizeof(fds[0].name), "dev-%.43s", dev[i].name);
        }
        *ret = fds;
        *ret_n = n;
        return 0;
}

char ***vfio_user_server_stored_fds(VfioUserServer *s) {
        return &s->stored_fds;
}

void vfio_user_prepare_hand_over(Broker *b) {
        for (Container *c = b->containers; c; c = c->next)
                for (VfioUserServer *s = c->vfio_user_servers; s; s = s->next) {
                        VfioUserClient *cl = s->client;
                        if (!cl || !client_inside_message(cl))
                                continue;
                        /* Its stream is not at a message boundary: the next instance could not tell
                         * where it is. Partial bytes are not kept. */
                        log_warning("vfio-user %s: disconnecting pid %d for the restart: %s.", s->device,
                                    (int) cl->pid, cl->out ? "its reply was not sent whole"
                                                           : "it was inside a message");
                        client_free(cl, cl->out ? "the daemon restarted while a reply was being sent"
                                                : "the daemon restarted while a message was being received");
                }
}

/* A client's DMA entries as they were; a mapped one whose container mapping is not there (unmapped by
 * the owner meanwhile) is only remembered. */
static int client_restore_dma(VfioUserClient *cl, const VfioUserDmaInfo *dma, size_t n_dma) {
        Container *c = cl->server->container;

        for (size_t i = 0; i < n_dma; i++) {
                MappingTableNode *conflict = NULL, *m;
                VfioUserDma *d;

                if (dma[i].size == 0 || dma[i].iova + (dma[i].size - 1) < dma[i].iova)
                        continue;
                d = calloc(1, sizeof(*d));
                if (!d)
                        return -ENOMEM;
                mapping_table_node_init(&d->node, dma[i].iova, dma[i].size);
                m = dma[i].mapped ? mapping_table_find(&c->mappings, dma[i].iova) : NULL;
                d->mapped = m && m->first == d->node.first && m->last == d->node.last;
                if (mapping_table_insert(&cl->dma, &d->node, &conflict) < 0)
                        free(d);
        }
        return 0;
}

/* Unmaps what the client had mapped when its session cannot come back. */
static void drop_lost_mappings(Container *c, const VfioUserDmaInfo *dma, size_t n_dma) {
        for (size_t i = 0; i < n_dma; i++) {
                BrokerError e = BROKER_ERROR_INIT;
                MappingTableNode *m = dma[i].mapped ? mapping_table_find(&c->mappings, dma[i].iova) : NULL;

                if (m && m->first == dma[i].iova && mapping_table_node_size(m) == dma[i].size)
                        (void) container_unmap(c, dma[i].iova, dma[i].size, &e);
        }
}

static int client_restore(VfioUserServer *s, const VfioUserSessionInfo *info, const VfioUserDmaInfo *dma,
                          size_t n_dma, int fd) {
        const char *lost = NULL;
        VfioUserClient *cl;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        uint32_t busy;
        int r;

        /* The same connection: the stored socket's peer is the process that connected then. */
        if (fd < 0)
                lost = "the client left while the daemon was away";
        else if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != info->uid ||
                 cred.pid != info->pid)
                lost = "the stored connection is not the client's";
        if (lost) {
                safe_close(fd);
                drop_lost_mappings(s->container, dma, n_dma);
                log_event(&(LogEvent) { LOG_MESSAGE_VFIO_USER_DISCONNECTED, .container = s->container->id,
                                        .label = s->container->label, .uid = &info->uid, .device = s->device,
                                        .reason = lost },
                          "vfio-user %s: client pid %d uid %u disconnected: %s", s->device, (int) info->pid,
                          (unsigned) info->uid, lost);
                __atomic_store_n(&s->page->busy, 0, __ATOMIC_SEQ_CST);
                return 0;
        }

        r = client_new(s, fd, info->uid, info->pid, info->client_serial, &cl);
        if (r < 0) {
                drop_lost_mappings(s->container, dma, n_dma);
                return r;
        }
        cl->negotiated = info->negotiated;
        cl->warned_unmapped = info->warned_unmapped;
        cl->capabilities = info->capabilities;
        cl->irq_indexes = info->irq_indexes;
        s->last_serial = info->client_serial;
        r = client_restore_dma(cl, dma, n_dma);

        busy = __atomic_load_n(&s->page->busy, __ATOMIC_SEQ_CST);
        if (r < 0)
                client_free(cl, "out of memory while taking the client back");
        else if (busy != 0)
                /* The previous instance died with part of a message taken off the socket, or part of
                 * its reply unsent: nobody knows where the stream is. */
                client_free(cl, "the previous instance of the daemon stopped in the middle of a message");
        else
                log_info("vfio-user %s: client pid %d taken back after the restart (%zu DMA entries).", s->device,
                         (int) cl->pid, mapping_table_size(&cl->dma));
        return 0;
}

int vfio_user_server_restore(Container *c, const VfioUserSessionInfo *info, const VfioUserDmaInfo *dma,
                             size_t n_dma, VfioUserRestoreFds *fds, BrokerError *e) {
        BackendDevice *dev = NULL;
        VfioUserServer *s;
        VfioUserFace *f;
        Group *g;
        int r;

        r = vfio_user_observe(c->broker, &f);
        if (r < 0)
                goto fail;
        if (f->last_id < info->id)
                f->last_id = info->id;

        g = broker_find_group_of_device(c->broker, info->device);
        if (!g || g->container != c) {
                r = broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE, "device %s is not in an attached group",
                                     info->device);
                goto fail;
        }
        if (fds->listen < 0) {
                r = broker_error_set(e, BROKER_ERROR_BAD_MEMORY, "the listener of %s was not kept", info->device);
                goto fail;
        }
        r = check_listener(fds->listen, e);
        if (r < 0)
                goto fail;

        if (fds->session < 0) {
                r = broker_error_set(e, BROKER_ERROR_BAD_MEMORY, "the session of %s was not kept", info->device);
                goto fail;
        }
        r = backend_container_restore_device(c->backend, g->id, info->device, fds->device, fds->n_device, &dev);
        if (r < 0) {
                r = broker_error_set_errno(e, r, "device %s cannot be taken back", info->device);
                goto fail;
        }
        r = server_start(c, info->device, info->id, dev, TAKE_FD(fds->listen), TAKE_FD(fds->session), &s);
        if (r < 0) {
                backend_device_free(dev);
                r = broker_error_set_errno(e, r, "Cannot serve %s again", info->device);
                goto fail;
        }
        if (memcmp(s->page->magic, SESSION_MAGIC, sizeof(s->page->magic)) != 0) {
                server_free(s, CLIENT_END_UNMAP);
                r = broker_error_set(e, BROKER_ERROR_BAD_MEMORY, "the session of %s is damaged", info->device);
                goto fail;
        }
        if (info->has_client)
                (void) client_restore(s, info, dma, n_dma, TAKE_FD(fds->client));
        else
                __atomic_store_n(&s->page->busy, 0, __ATOMIC_SEQ_CST);
        log_info("Container %s: serving %s over vfio-user again after the restart.", c->path, info->device);
        return 0;

fail:
        /* Whatever the client had mapped goes, as on any disconnect. */
        drop_lost_mappings(c, dma, n_dma);
        return r;
}

/* --- the face's life --- */

/* The container goes: before it is freed, the devices (which use its backend container) go first. Its
 * mappings are left to the container's teardown, which unmaps everything at once (or, on a hand-over,
 * leaves them to the next instance). */
static void vfio_user_container_removed(void *userdata, Container *c) {
        while (c->vfio_user_servers)
                server_free(c->vfio_user_servers, CLIENT_END_KEEP_MAPPINGS);
}

static void vfio_user_done(void *userdata) {
        free(userdata);
}

static const BrokerObserver vfio_user_observer = {
        .container_removed = vfio_user_container_removed,
        .done = vfio_user_done,
};

static VfioUserFace *face_of(Broker *b) {
        for (size_t i = 0; i < b->n_observers; i++)
                if (b->observers[i].ops == &vfio_user_observer)
                        return b->observers[i].userdata;
        return NULL;
}

/* The vfio-user face hears of removals like the other faces; it subscribes with its first server, or
 * when the state store watches it (which then comes first among the observers: a container's sessions
 * are recorded gone before the container is). */
static int vfio_user_observe(Broker *b, VfioUserFace **ret) {
        VfioUserFace *f = face_of(b);
        int r;

        if (!f) {
                f = calloc(1, sizeof(*f));
                if (!f)
                        return -ENOMEM;
                r = broker_observe(b, &vfio_user_observer, f);
                if (r < 0) {
                        free(f);
                        return r;
                }
        }
        *ret = f;
        return 0;
}

int vfio_user_watch(Broker *b, const VfioUserWatch *w, void *userdata) {
        VfioUserFace *f;
        int r;

        r = vfio_user_observe(b, &f);
        if (r < 0)
                return r;
        f->watch = w;
        f->userdata = userdata;
        return 0;
}
