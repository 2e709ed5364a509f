/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The vfio-user face: one device of a container served on a listening AF_UNIX stream socket that the
 * container's owner bound, so that an unmodified VMM (QEMU's vfio-user-pci, cloud-hypervisor's
 * --user-device) uses the device through the broker.
 *
 * Like the D-Bus faces it parses and validates a whole message first (vfio-user-message.c), then calls
 * the container's logic (DMA_MAP with an fd is container_map(), exactly as D-Bus Map) or the backend's
 * device (backend-device.h), then replies. One client at a time, whose SO_PEERCRED uid must be the
 * container's or 0. All I/O is non-blocking with one message in and one reply out per client at most,
 * so the daemon never waits for a client. A malformed message disconnects that client with a logged
 * reason; on disconnect its mappings and interrupt eventfds are dropped and the device stays served
 * for the next client, as the protocol asks.
 *
 * A session survives a daemon restart (vfio-brokerd(8), RESTARTS): the state store keeps its fds and
 * records from what the face reports (VfioUserWatch below), and a client is handed over only at a
 * message boundary, which a page of shared memory records for the case of a crash. */

#include <stddef.h>

#include "container.h"
#include "vfio-user-message.h"

typedef struct VfioUserServer VfioUserServer;

/* A served device's session as the state store keeps it across a daemon restart (plain data). */
typedef struct VfioUserSessionInfo {
        uint32_t id;            /* the server's, unique in the daemon; names its fds in the store */
        char device[40];
        bool has_client;
        uint32_t client_serial; /* per server; names the client's socket in the store */
        uid_t uid;              /* the client's, from SO_PEERCRED */
        pid_t pid;
        bool negotiated;
        bool warned_unmapped;
        VfioUserCapabilities capabilities;
        uint32_t irq_indexes;   /* bit per IRQ index that got eventfds */
} VfioUserSessionInfo;

/* One of the client's DMA_MAPs; mapped: it carried an fd and is a mapping of the container too. */
typedef struct VfioUserDmaInfo {
        uint64_t iova, size;
        bool mapped;
} VfioUserDmaInfo;

/* What the face reports about its sessions: the state store watches (state.c sets itself up in
 * state_setup()), as it observes the logic; the face never calls the store. Reports go out as the
 * session changes, and commit() ends every request that made some (a message, a connection, a
 * disconnection, ServeVfioUser): before the reply, as the logic's container_changed does. A DMA entry is
 * reported before its container mapping is made and before it is unmapped, so that no committed state
 * has a mapping of the client's that the client's table does not name. fds: the session's fds changed
 * (a client came or went, the device took an interrupt eventfd). While the daemon hands over to its
 * next instance nothing is reported: the session is left as it is. */
typedef struct VfioUserWatch {
        void (*server_added)(void *userdata, VfioUserServer *s);
        void (*server_removed)(void *userdata, VfioUserServer *s);
        void (*client_changed)(void *userdata, VfioUserServer *s, bool connected);
        void (*client_removed)(void *userdata, VfioUserServer *s, size_t n_dma_left);
        void (*dma_added)(void *userdata, VfioUserServer *s, const VfioUserDmaInfo *d);
        void (*dma_removed)(void *userdata, VfioUserServer *s, const VfioUserDmaInfo *d);
        void (*commit)(void *userdata, VfioUserServer *s, bool fds);
} VfioUserWatch;

int vfio_user_watch(Broker *b, const VfioUserWatch *w, void *userdata);

/* Starts serving device (of a group attached to c) on listen_fd (borrowed; the server keeps a copy,
 * switched to non-blocking). Errors: NoSuchDevice, Busy (already served, or the backend refuses),
 * BadMemory (not a listening AF_UNIX stream socket). */
int vfio_user_server_new(Container *c, const char *device, int listen_fd, VfioUserServer **ret, BrokerError *e);

/* Stops serving: the client is disconnected, its mappings dropped, the device released. When the
 * container goes (Close, its owner leaving, a hand-over), its servers stop by themselves: the face
 * observes container removal (BrokerObserver). */
VfioUserServer *vfio_user_server_free(VfioUserServer *s);

VfioUserServer *vfio_user_server_find(Container *c, const char *device);

const char *vfio_user_server_device(const VfioUserServer *s);
VfioUserServer *vfio_user_server_next(const VfioUserServer *s);

/* For the state store. */
Container *vfio_user_server_container(const VfioUserServer *s);
void vfio_user_server_info(const VfioUserServer *s, VfioUserSessionInfo *ret);
/* The client's DMA table, in IOVA order (*ret a new array). */
int vfio_user_server_dma(const VfioUserServer *s, VfioUserDmaInfo **ret, size_t *ret_n);
/* The fds a restart needs (borrowed; *ret a new array): "listen", "session", "client-<serial>" and the
 * device's as "dev-<name>". */
int vfio_user_server_get_fds(VfioUserServer *s, BackendFd **ret, size_t *ret_n);
/* The names the state store has in the fd store for s, for it to manage. */
char ***vfio_user_server_stored_fds(VfioUserServer *s);

/* Before an orderly exit that hands the sessions over to the next instance: a client caught inside a
 * message (part of it received, or part of its reply unsent) is disconnected with the reason logged, as
 * on any disconnect; a client between messages is left untouched. */
void vfio_user_prepare_hand_over(Broker *b);

/* The fds of a session a previous instance left (each taken when used: set to -1). */
typedef struct VfioUserRestoreFds {
        int listen, session, client;
        BackendFd *device;
        size_t n_device;
} VfioUserRestoreFds;

/* Serves info's device of c again on the kept listener with the kept device, and takes the client back
 * with its DMA table when it is still connected and the previous instance left it between messages;
 * otherwise the client is disconnected as on any disconnect (its mappings dropped). A session that
 * cannot be served again (its listener or device not kept) drops the client's mappings and fails. */
int vfio_user_server_restore(Container *c, const VfioUserSessionInfo *info, const VfioUserDmaInfo *dma,
                             size_t n_dma, VfioUserRestoreFds *fds, BrokerError *e);
