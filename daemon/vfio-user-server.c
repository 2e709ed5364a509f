/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The vfio-user face (see vfio-user-server.h). Longer than 600 lines: the listener, the one client's
 * non-blocking framing with fds and the ten command handlers all work on the client's state (its
 * message, its pending reply, its DMA table); parsing lives apart in vfio-user-message.c already, and
 * splitting the handlers off would only move that structure into a header of its own. */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backend-device.h"
#include "group.h"
#include "log.h"
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

struct VfioUserServer {
        Container *container;
        VfioUserServer *next;
        char *device;
        BackendDevice *dev;
        int listen_fd;
        sd_event_source *listen_source;
        VfioUserClient *client;
};

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

static void client_clear_message(VfioUserClient *cl) {
        for (size_t i = 0; i < cl->n_fds; i++)
                safe_close(cl->fds[i]);
        cl->n_fds = 0;
        cl->payload = mfree(cl->payload);
        cl->payload_have = 0;
        cl->header_have = 0;
}

/* Drops one of the client's DMA entries; with mapped, the container's mapping goes too. */
static void client_dma_drop(VfioUserClient *cl, VfioUserDma *d) {
        Container *c = cl->server->container;

        mapping_table_remove(&cl->dma, &d->node);
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

        if (!cl)
                return;
        s = cl->server;
        log_info("vfio-user %s: client pid %d uid %u disconnected: %s", s->device, (int) cl->pid, (unsigned) cl->uid,
                 reason);

        MAPPING_TABLE_FOREACH_SAFE(node, next, &cl->dma) {
                VfioUserDma *d = container_of(node, VfioUserDma, node);
                if (end == CLIENT_END_KEEP_MAPPINGS)
                        d->mapped = false;
                client_dma_drop(cl, d);
        }

        /* The protocol: the client's interrupt fds are closed, the device state is otherwise kept. */
        for (uint32_t i = 0; i < 32; i++)
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
        s->client = NULL;
        free(cl);
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

        if (req->n_fds == 1) {
                /* Exactly as D-Bus Map: the same checks, errors, quota, pinning and notifications. */
                r = container_map(c, cl->fds[0], m->offset, m->size, m->address, m->flags, &e);
                if (r < 0) {
                        log_info("vfio-user %s: DMA_MAP 0x%" PRIx64 "+0x%" PRIx64 " refused: %s", cl->server->device,
                                 m->address, m->size, e.message[0] ? e.message : strerror(-r));
                        return client_reply_error(cl, r);
                }
                d->mapped = true;
        } else if (!cl->warned_unmapped) {
                log_notice("vfio-user %s: client pid %d sent DMA_MAP 0x%" PRIx64 "+0x%" PRIx64 " without an fd "
                           "(anonymous memory, e.g. QEMU's ROMs without -machine aux-ram-share=on): acknowledged "
                           "but not mapped in the IOMMU, device DMA there faults. Logged once per client.",
                           cl->server->device, (int) cl->pid, m->address, m->size);
                cl->warned_unmapped = true;
        }

        r = mapping_table_insert(&cl->dma, &d->node, &conflict);
        assert(r == 0); /* checked above */
        (void) r;
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
                client_dma_drop(cl, container_of(node, VfioUserDma, node));
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
                n = client_recv(cl, (uint8_t *) &cl->header + cl->header_have, sizeof(cl->header) - cl->header_have,
                                reason);
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
        }
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

        cl = calloc(1, sizeof(*cl));
        if (!cl)
                return log_oom();
        cl->server = s;
        cl->uid = cred.uid;
        cl->pid = cred.pid;
        cl->out_fd = -EBADF;
        cl->dma = MAPPING_TABLE_INIT;
        r = sd_event_add_io(c->broker->event, &cl->source, cfd, EPOLLIN, client_io, cl);
        if (r < 0) {
                free(cl);
                return log_error_errno(r, "vfio-user %s: cannot watch the client: %m", s->device);
        }
        cl->fd = TAKE_FD(cfd);
        s->client = cl;
        log_info("vfio-user %s: client pid %d uid %u connected.", s->device, (int) cl->pid, (unsigned) cl->uid);
        return 0;
}

static int vfio_user_observe(Broker *b);

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

int vfio_user_server_new(Container *c, const char *device, int listen_fd, VfioUserServer **ret, BrokerError *e) {
        _cleanup_close_ int fd = -EBADF;
        VfioUserServer *s;
        Group *g;
        int r, flags;

        r = check_listener(listen_fd, e);
        if (r < 0)
                return r;
        r = vfio_user_observe(c->broker);
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

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->container = c;
        s->listen_fd = -EBADF;
        s->device = strdup(device);
        if (!s->device) {
                free(s);
                return -ENOMEM;
        }
        r = backend_container_get_device(c->backend, g->id, device, &s->dev);
        if (r < 0) {
                free(s->device);
                free(s);
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
        r = sd_event_add_io(c->broker->event, &s->listen_source, fd, EPOLLIN, listen_io, s);
        if (r < 0) {
                backend_device_free(s->dev);
                free(s->device);
                free(s);
                return broker_error_set_errno(e, r, "Cannot watch the listener");
        }
        s->listen_fd = TAKE_FD(fd);

        s->next = c->vfio_user_servers;
        c->vfio_user_servers = s;
        log_info("Container %s: serving %s over vfio-user.", c->path, device);
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
        sd_event_source_disable_unref(s->listen_source);
        safe_close(s->listen_fd);
        backend_device_free(s->dev);
        log_info("Container %s: stopped serving %s over vfio-user.", c->path, s->device);
        free(s->device);
        free(s);
        return NULL;
}

VfioUserServer *vfio_user_server_free(VfioUserServer *s) {
        return server_free(s, CLIENT_END_UNMAP);
}

/* The container goes: before it is freed, the devices (which use its backend container) go first. Its
 * mappings are left to the container's teardown, which unmaps everything at once (or, on a hand-over,
 * leaves them to the next instance). */
static void vfio_user_container_removed(void *userdata, Container *c) {
        while (c->vfio_user_servers)
                server_free(c->vfio_user_servers, CLIENT_END_KEEP_MAPPINGS);
}

static const BrokerObserver vfio_user_observer = {
        .container_removed = vfio_user_container_removed,
};

/* The vfio-user face hears of removals like the other faces; it subscribes with its first server. */
static int vfio_user_observe(Broker *b) {
        for (size_t i = 0; i < b->n_observers; i++)
                if (b->observers[i].ops == &vfio_user_observer)
                        return 0;
        return broker_observe(b, &vfio_user_observer, NULL);
}
