/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The state store's side of the vfio-user face: the face reports its sessions (VfioUserWatch in
 * vfio-user-server.h) as the logic reports containers, and they become records of the state log
 * (state-log.h) and fds in the store, committed before the reply to the message that changed them. A
 * session keeps in the store, under v<container>-<server>-<name>: its listener, its session page (where
 * the server is in the client's stream), the client's socket and the device's fds (dev-*). */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container.h"
#include "log.h"
#include "state-log.h"
#include "state-private.h"
#include "vfio-user-server.h"

static void live_add(StateStore *s, int64_t delta) {
        /* A count for the compaction heuristic only: never below zero. */
        s->live = delta < 0 && (uint64_t) -delta > s->live ? 0 : s->live + (uint64_t) delta;
}

static bool vfio_user_recordable(VfioUserServer *vs, VfioUserSessionInfo *info) {
        vfio_user_server_info(vs, info);
        /* Device names fit the record (PCI names take 12 bytes); a longer one is served, not kept. */
        return strlen(vfio_user_server_device(vs)) < sizeof(info->device);
}

static StateRecord vfio_user_client_record(Container *c, const VfioUserSessionInfo *info) {
        const VfioUserCapabilities *k = &info->capabilities;

        return (StateRecord) {
                .type = STATE_RECORD_VFIO_USER_CLIENT,
                .container = c->id,
                .vu_client = {
                        .server = info->id,
                        .serial = info->client_serial,
                        .uid = (uint32_t) info->uid,
                        .pid = (int32_t) info->pid,
                        .irq_indexes = info->irq_indexes,
                        .flags = (info->negotiated ? STATE_VFIO_USER_CLIENT_NEGOTIATED : 0) |
                                 (info->warned_unmapped ? STATE_VFIO_USER_CLIENT_WARNED_UNMAPPED : 0) |
                                 (k->twin_socket ? STATE_VFIO_USER_CLIENT_TWIN_SOCKET : 0) |
                                 (k->write_multiple ? STATE_VFIO_USER_CLIENT_WRITE_MULTIPLE : 0),
                        .max_msg_fds = k->max_msg_fds,
                        .max_dma_maps = k->max_dma_maps,
                        .max_data_xfer_size = k->max_data_xfer_size,
                        .pgsizes = k->pgsizes,
                },
        };
}

static StateRecord vfio_user_server_record(Container *c, const VfioUserSessionInfo *info) {
        StateRecord r = { .type = STATE_RECORD_VFIO_USER_SERVER, .container = c->id, .vu_server.server = info->id };

        memcpy(r.vu_server.device, info->device, sizeof(r.vu_server.device));
        return r;
}

static StateRecord vfio_user_dma_record(Container *c, uint32_t server, const VfioUserDmaInfo *d, bool added) {
        return (StateRecord) {
                .type = added ? STATE_RECORD_VFIO_USER_DMA_ADD : STATE_RECORD_VFIO_USER_DMA_DEL,
                .container = c->id,
                .vu_dma = { .server = server, .flags = d->mapped ? STATE_VFIO_USER_DMA_MAPPED : 0, .iova = d->iova,
                            .size = d->size },
        };
}

static void vfio_user_prefix(VfioUserServer *vs, char *buf, size_t size) {
        VfioUserSessionInfo info;

        vfio_user_server_info(vs, &info);
        snprintf(buf, size, "v%" PRIu64 "-%" PRIu32 "-", vfio_user_server_container(vs)->id, info.id);
}

static void on_vfio_user_server_added(void *userdata, VfioUserServer *vs) {
        Container *c = vfio_user_server_container(vs);
        VfioUserSessionInfo info;
        StateRecord r;

        if (!vfio_user_recordable(vs, &info))
                return (void) log_warning("vfio-user %s: the device name is too long to be kept; its session "
                                          "will not survive a restart.", vfio_user_server_device(vs));
        r = vfio_user_server_record(c, &info);
        state_append(c->broker, &r);
        live_add(c->broker->state, +1);
}

static void on_vfio_user_client_changed(void *userdata, VfioUserServer *vs, bool connected) {
        Container *c = vfio_user_server_container(vs);
        VfioUserSessionInfo info;
        StateRecord r;

        if (!vfio_user_recordable(vs, &info) || !info.has_client)
                return;
        r = vfio_user_client_record(c, &info);
        state_append(c->broker, &r);
        if (connected)
                live_add(c->broker->state, +1);
}

static void on_vfio_user_client_removed(void *userdata, VfioUserServer *vs, size_t n_dma_left) {
        Container *c = vfio_user_server_container(vs);
        VfioUserSessionInfo info;
        StateRecord r = { .type = STATE_RECORD_VFIO_USER_CLIENT_GONE, .container = c->id };

        if (!vfio_user_recordable(vs, &info))
                return;
        r.vu_dma.server = info.id;
        state_append(c->broker, &r);
        live_add(c->broker->state, -1 - (int64_t) n_dma_left);
}

static void on_vfio_user_dma(VfioUserServer *vs, const VfioUserDmaInfo *d, bool added) {
        Container *c = vfio_user_server_container(vs);
        VfioUserSessionInfo info;
        StateRecord r;

        if (!vfio_user_recordable(vs, &info))
                return;
        r = vfio_user_dma_record(c, info.id, d, added);
        state_append(c->broker, &r);
        live_add(c->broker->state, added ? +1 : -1);
}

static void on_vfio_user_dma_added(void *userdata, VfioUserServer *vs, const VfioUserDmaInfo *d) {
        on_vfio_user_dma(vs, d, true);
}

static void on_vfio_user_dma_removed(void *userdata, VfioUserServer *vs, const VfioUserDmaInfo *d) {
        on_vfio_user_dma(vs, d, false);
}

/* The end of a request of the face: the fds its session needs are in the store before the records
 * that name them count; those it no longer needs leave after. */
static void on_vfio_user_commit(void *userdata, VfioUserServer *vs, bool fds) {
        Broker *b = userdata;
        Container *c = vfio_user_server_container(vs);
        _cleanup_strv_free_ char **drop = NULL, **drop_backend = NULL;
        VfioUserSessionInfo info;

        /* A restore takes every fd back first (state_vfio_user_adopt()). */
        if (!b->state || b->state->restoring)
                return;
        /* Opening the device may have given the backend an fd of the container's (the sim's end of a
         * device fd, which keeps the group busy): it goes to the store like the container's others. */
        if (fds && state_push_backend_fds(c, &drop_backend) < 0)
                log_warning("Container %" PRIu64 ": cannot store its fds.", c->id);
        if (fds && vfio_user_recordable(vs, &info)) {
                _cleanup_free_ BackendFd *list = NULL;
                size_t n = 0;
                char prefix[64];

                vfio_user_prefix(vs, prefix, sizeof(prefix));
                if (vfio_user_server_get_fds(vs, &list, &n) < 0 ||
                    state_sync_fds(b, c->uid, prefix, list, n, vfio_user_server_stored_fds(vs), &drop) < 0)
                        log_warning("vfio-user %s: cannot store the session's fds; it may not survive a restart.",
                                    vfio_user_server_device(vs));
        }
        state_commit(b);
        state_remove_names(b, c->uid, drop);
        state_remove_fds(c, drop_backend);
}

static void on_vfio_user_server_removed(void *userdata, VfioUserServer *vs) {
        Broker *b = userdata;
        Container *c = vfio_user_server_container(vs);
        char ***stored = vfio_user_server_stored_fds(vs);
        VfioUserSessionInfo info;
        StateRecord r = { .type = STATE_RECORD_VFIO_USER_STOP, .container = c->id };

        if (vfio_user_recordable(vs, &info)) {
                r.vu_dma.server = info.id;
                state_append(b, &r);
                live_add(b->state, -1);
        }
        /* The record first, then the fds it named. */
        if (b->state->log)
                state_commit(b);
        state_remove_names(b, c->uid, *stored);
        *stored = strv_free(*stored);
}

const VfioUserWatch state_vfio_user_watch = {
        .server_added = on_vfio_user_server_added,
        .server_removed = on_vfio_user_server_removed,
        .client_changed = on_vfio_user_client_changed,
        .client_removed = on_vfio_user_client_removed,
        .dma_added = on_vfio_user_dma_added,
        .dma_removed = on_vfio_user_dma_removed,
        .commit = on_vfio_user_commit,
};

void state_vfio_user_adopt(Broker *b, VfioUserServer *vs, char **names) {
        Container *c = vfio_user_server_container(vs);
        char ***stored = vfio_user_server_stored_fds(vs);
        _cleanup_strv_free_ char **drop = NULL;
        _cleanup_free_ BackendFd *list = NULL;
        size_t n = 0;
        char prefix[64];

        for (char **s = names; s && *s; s++)
                if (strv_push(stored, *s) >= 0)
                        state_charge(b, c->uid, +1);
        /* What the session no longer needs (the socket of a client that did not come back) leaves. */
        vfio_user_prefix(vs, prefix, sizeof(prefix));
        if (vfio_user_server_get_fds(vs, &list, &n) >= 0 &&
            state_sync_fds(b, c->uid, prefix, list, n, stored, &drop) >= 0)
                state_remove_names(b, c->uid, drop);
}

/* Every session of c, for a snapshot. Returns the records written, or < 0. */
int state_log_vfio_user_snapshot(StateLog *l, Container *c) {
        int r = 0, n = 0;

        for (VfioUserServer *vs = c->vfio_user_servers; vs && r >= 0; vs = vfio_user_server_next(vs)) {
                _cleanup_free_ VfioUserDmaInfo *dma = NULL;
                VfioUserSessionInfo info;
                size_t n_dma = 0;
                StateRecord x;

                if (!vfio_user_recordable(vs, &info))
                        continue;
                x = vfio_user_server_record(c, &info);
                r = state_log_append(l, &x);
                n++;
                if (r < 0 || !info.has_client)
                        continue;
                x = vfio_user_client_record(c, &info);
                r = state_log_append(l, &x);
                n++;
                if (r >= 0)
                        r = vfio_user_server_dma(vs, &dma, &n_dma);
                for (size_t i = 0; i < n_dma && r >= 0; i++) {
                        x = vfio_user_dma_record(c, info.id, &dma[i], true);
                        r = state_log_append(l, &x);
                        n++;
                }
        }
        return r < 0 ? r : n;
}
