/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Shared by the vfio-user face's files only; its contract is vfio-user-server.h. One served device and
 * its one client are split by concept: vfio-user-server.c (the listener, the server's life, reporting
 * to the watch, the face's life as a broker observer), vfio-user-client.c (the client's connection:
 * its life, receiving with fds, replies, dispatch), vfio-user-commands.c (what each command does to
 * the device and the container) and vfio-user-restart.c (what a session keeps across a daemon
 * restart). All work on the state below. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-event.h>

#include "backend-device.h"
#include "mapping-table.h"
#include "vfio-user-message.h"
#include "vfio-user-server.h"

typedef struct VfioUserClient VfioUserClient;

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

#define VFIO_USER_SESSION_MAGIC "vfbrvus1"

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

static inline VfioUserDmaInfo vfio_user_dma_info(const VfioUserDma *d) {
        return (VfioUserDmaInfo) { d->node.first, mapping_table_node_size(&d->node), d->mapped };
}

/* vfio-user-server.c: reporting to the watch (the state store). */

/* The watch, unless the daemon hands over; marks s as having reported. */
const VfioUserWatch *vfio_user_watch_of(VfioUserServer *s, void **ret_userdata);

#define VFIO_USER_REPORT(s, op, ...)                                            \
        do {                                                                    \
                void *_u;                                                       \
                const VfioUserWatch *_w = vfio_user_watch_of((s), &_u);         \
                if (_w && _w->op)                                               \
                        _w->op(_u, (s), ##__VA_ARGS__);                         \
        } while (false)

/* The end of a request: what it reported is committed (before the reply). */
void vfio_user_report_commit(VfioUserServer *s, bool fds);

/* vfio-user-server.c: the face and its servers. */

/* The face of b, subscribing it as a broker observer the first time. */
int vfio_user_observe(Broker *b, VfioUserFace **ret);
/* BadMemory unless fd is a listening AF_UNIX SOCK_STREAM socket. */
int vfio_user_check_listener(int fd, BrokerError *e);
/* The server around a device already open: listen_fd and session_fd are taken, also on failure. */
int vfio_user_server_start(Container *c, const char *device, uint32_t id, BackendDevice *dev, int listen_fd,
                           int session_fd, VfioUserServer **ret);

/* vfio-user-client.c: the client's connection. */

/* Why a client goes: only a client leaving a container that stays takes its mappings out of it; when the
 * container itself goes (Close, the owner leaving, a hand-over to the next instance), its teardown or the
 * next instance deals with every mapping. */
typedef enum VfioUserClientEnd {
        VFIO_USER_CLIENT_END_UNMAP,
        VFIO_USER_CLIENT_END_KEEP_MAPPINGS,
} VfioUserClientEnd;

/* A client on fd (taken, also on failure), watched for input; it becomes s->client. */
int vfio_user_client_new(VfioUserServer *s, int fd, uid_t uid, pid_t pid, uint32_t serial,
                         VfioUserClient **ret);
/* Disconnects cl (NULL: nothing to do) with reason logged; end says whether its mappings leave the
 * container (vfio_user_client_free(): they do). */
void vfio_user_client_free(VfioUserClient *cl, const char *reason);
void vfio_user_client_free_full(VfioUserClient *cl, const char *reason, VfioUserClientEnd end);
/* Part of a message is received, or part of a reply is unsent. */
bool vfio_user_client_inside_message(const VfioUserClient *cl);
/* Drops one of the client's DMA entries (and, when mapped, the container's mapping). */
void vfio_user_client_dma_drop(VfioUserClient *cl, VfioUserDma *d, bool report);
/* Queues the reply to the current message, after committing what it reported; < 0 when it cannot be
 * queued or sent. */
int vfio_user_client_reply(VfioUserClient *cl, const void *payload, size_t size, int fd);
int vfio_user_client_reply_error(VfioUserClient *cl, int error);

/* vfio-user-commands.c */

/* Does what a parsed and valid request asks and replies; < 0 (out of memory, or the reply cannot be
 * sent) disconnects the client. */
int vfio_user_command_handle(VfioUserClient *cl, const VfioUserRequest *req);
