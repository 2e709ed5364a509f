/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* What a vfio-user session keeps across a daemon restart (vfio-brokerd(8), RESTARTS): what the state
 * store reads of it (the session, the client's DMA table, the fds for the fd store), the hand-over,
 * which disconnects a client caught inside a message, and the next instance's restore, which takes the
 * client back only if the stream was at a message boundary (vfio-user-server-private.h: the session
 * page). */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "group.h"
#include "log.h"
#include "message-ids.h"
#include "vfio-user-server-private.h"

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
                (*ret)[n++] = vfio_user_dma_info(container_of(node, VfioUserDma, node));
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
                        if (!cl || !vfio_user_client_inside_message(cl))
                                continue;
                        /* Its stream is not at a message boundary: the next instance could not tell
                         * where it is. Partial bytes are not kept. */
                        log_warning("vfio-user %s: disconnecting pid %d for the restart: %s.", s->device,
                                    (int) cl->pid, cl->out ? "its reply was not sent whole"
                                                           : "it was inside a message");
                        vfio_user_client_free(cl, cl->out ? "the daemon restarted while a reply was being sent"
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

        r = vfio_user_client_new(s, fd, info->uid, info->pid, info->client_serial, &cl);
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
                vfio_user_client_free(cl, "out of memory while taking the client back");
        else if (busy != 0)
                /* The previous instance died with part of a message taken off the socket, or part of
                 * its reply unsent: nobody knows where the stream is. */
                vfio_user_client_free(cl, "the previous instance of the daemon stopped in the middle of a message");
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
        r = vfio_user_check_listener(fds->listen, e);
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
        r = vfio_user_server_start(c, info->device, info->id, dev, TAKE_FD(fds->listen), TAKE_FD(fds->session), &s);
        if (r < 0) {
                backend_device_free(dev);
                r = broker_error_set_errno(e, r, "Cannot serve %s again", info->device);
                goto fail;
        }
        if (memcmp(s->page->magic, VFIO_USER_SESSION_MAGIC, sizeof(s->page->magic)) != 0) {
                vfio_user_server_free(s);
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
