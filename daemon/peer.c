/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-id128.h>

#include "container-dbus.h"
#include "group-dbus.h"
#include "log.h"
#include "manager-dbus.h"
#include "owner-watch.h"
#include "peer-relay.h"
#include "peer.h"
#include "quota.h"

struct Peer {
        Peer *next;
        Broker *broker;
        sd_bus *bus;
        PeerRelay *relay; /* reads the client's socket for sd-bus, bounding what it may send */
        char *owner;
        uid_t uid;
        OwnerWatch *owner_watch; /* the opener: the connection closes when it leaves the bus */
        uint64_t bytes_in_flight; /* declared size of the large message still arriving, if any */
};

static Peer *peer_find(Broker *b, sd_bus *bus) {
        for (Peer *p = b->peers; p; p = p->next)
                if (p->bus == bus)
                        return p;
        return NULL;
}

static size_t peer_count_of_uid(Broker *b, uid_t uid) {
        size_t n = 0;

        for (Peer *p = b->peers; p; p = p->next)
                n += p->uid == uid;
        return n;
}

static void peer_free(Peer *p) {
        Broker *b = p->broker;

        for (Peer **i = &b->peers; *i; i = &(*i)->next)
                if (*i == p) {
                        *i = p->next;
                        break;
                }
        b->n_peers--;
        /* First: it gives back the fds of a message still arriving. */
        p->relay = peer_relay_free(p->relay);
        /* Never flush: a peer that does not read (or never finished authenticating) would block the
         * daemon. What it did not read is lost with its connection. */
        sd_bus_close_unref(p->bus);
        owner_watch_unref(b, p->owner_watch);
        quota_release_memory(b, p->uid, PEER_CONNECTION_FDS, 0);
        free(p->owner);
        free(p);
}

static int peer_charge_fds(void *userdata, unsigned n, char *reason, size_t reason_size) {
        Peer *p = userdata;
        BrokerError e = BROKER_ERROR_INIT;
        int r;

        r = quota_charge_fds_in_flight(p->broker, p->uid, n, PEER_MESSAGE_FDS_MAX, &e);
        if (r < 0)
                (void) snprintf(reason, reason_size, "%s", e.code != BROKER_ERROR_NONE ? e.message : strerror(-r));
        return r;
}

static void peer_release_fds(void *userdata, unsigned n) {
        Peer *p = userdata;

        quota_release_fds_in_flight(p->broker, p->uid, n);
}

static int peer_charge_bytes(void *userdata, uint64_t n, char *reason, size_t reason_size) {
        Peer *p = userdata;
        uint64_t total = 0;

        if (p->uid != 0) {
                for (Peer *i = p->broker->peers; i; i = i->next)
                        if (i->uid == p->uid)
                                total += i->bytes_in_flight;
                if (total + n > PEER_USER_BYTES_MAX) {
                        (void) snprintf(reason, reason_size, "its message of %" PRIu64 " bytes would make the "
                                        "unfinished messages of uid %u's peer connections %" PRIu64 " bytes, "
                                        "more than the %" PRIu64 " they may hold together.", n, p->uid,
                                        total + n, PEER_USER_BYTES_MAX);
                        return -EDQUOT;
                }
        }
        p->bytes_in_flight += n;
        return 0;
}

static void peer_release_bytes(void *userdata, uint64_t n) {
        Peer *p = userdata;

        assert(p->bytes_in_flight >= n);
        p->bytes_in_flight -= n;
}

static const PeerRelayAccount peer_account = {
        .charge_fds = peer_charge_fds,
        .release_fds = peer_release_fds,
        .charge_bytes = peer_charge_bytes,
        .release_bytes = peer_release_bytes,
};

static int on_peer_disconnected(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Peer *p = userdata;

        log_debug("Peer connection of %s closed.", p->owner);
        peer_free(p);
        return 0;
}

static void peer_abandon(Peer *p) {
        Broker *b = p->broker;

        peer_relay_free(p->relay);
        if (p->owner_watch)
                owner_watch_unref(b, p->owner_watch);
        free(p->owner);
        free(p);
}

static int peer_connect(Broker *b, const char *owner, uid_t uid, int *ret_fd) {
        _cleanup_(sd_bus_close_unrefp) sd_bus *bus = NULL;
        _cleanup_close_ int ours = -EBADF, theirs = -EBADF;
        int pair[2], input = -EBADF, output = -EBADF, r;
        char description[128];
        sd_id128_t id;
        Peer *p;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0)
                return -errno;
        ours = pair[0];
        theirs = pair[1];

        r = sd_id128_randomize(&id);
        if (r >= 0)
                r = sd_bus_new(&bus);
        if (r < 0)
                return r;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->broker = b;
        p->uid = uid;
        p->owner = strdup(owner);
        if (!p->owner) {
                peer_abandon(p);
                return -ENOMEM;
        }

        (void) snprintf(description, sizeof(description), "%s (uid %u)", owner, (unsigned) uid);
        r = peer_relay_new(b->event, bus, TAKE_FD(ours), &peer_account, p, description, &p->relay, &input, &output);
        if (r >= 0) {
                r = sd_bus_set_fd(bus, input, output);
                if (r < 0) {
                        safe_close(input);
                        safe_close(output);
                }
        }
        if (r >= 0)
                r = sd_bus_set_server(bus, true, id);
        /* The socketpair sd-bus reads carries the daemon's own credentials: authentication proves
         * nothing here. The identity is the one fixed below, from the bus connection that asked. */
        if (r >= 0)
                r = sd_bus_set_anonymous(bus, true);
        if (r >= 0)
                r = sd_bus_negotiate_fds(bus, true);
        if (r >= 0)
                r = manager_dbus_register_on(b, bus);
        if (r >= 0)
                r = group_dbus_register_on(b, bus);
        if (r >= 0)
                r = container_dbus_register_on(b, bus);
        if (r >= 0)
                r = owner_watch_ref(b, owner, &p->owner_watch);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, "org.freedesktop.DBus.Local", "/org/freedesktop/DBus/Local",
                                        "org.freedesktop.DBus.Local", "Disconnected", on_peer_disconnected, p);
        if (r >= 0)
                r = sd_bus_attach_event(bus, b->event, SD_EVENT_PRIORITY_NORMAL);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0) {
                peer_abandon(p);
                return r;
        }
        p->bus = TAKE_PTR(bus);
        b->n_peers++;
        p->next = b->peers;
        b->peers = p;

        *ret_fd = TAKE_FD(theirs);
        return 0;
}

int peer_open(Broker *b, const char *owner, uid_t uid, int *ret_fd, BrokerError *e) {
        int r;

        /* Each costs the daemon PEER_CONNECTION_FDS fds, memory, and up to one message in flight
         * (PEER_MESSAGE_SIZE_MAX bytes, held by sd-bus, and PEER_MESSAGE_FDS_MAX fds, held by the relay
         * and charged while it does): bounded per user. Root is not limited. */
        if (uid != 0 && peer_count_of_uid(b, uid) >= PEERS_PER_USER_MAX)
                return -EUSERS;
        /* ... and its fds count with the user's memory fds, so that neither can take the daemon's fds
         * from everyone else. */
        r = quota_charge_memory(b, uid, PEER_CONNECTION_FDS, 0, false, e);
        if (r < 0)
                return r;
        r = peer_connect(b, owner, uid, ret_fd);
        if (r < 0)
                quota_release_memory(b, uid, PEER_CONNECTION_FDS, 0);
        return r;
}

void peer_close_all_of(Broker *b, const char *owner) {
        for (Peer *p = b->peers, *next; p; p = next) {
                next = p->next;
                if (strcmp(p->owner, owner) == 0)
                        peer_free(p);
        }
}

void peer_free_all(Broker *b) {
        while (b->peers)
                peer_free(b->peers);
}

int peer_identity(Broker *b, sd_bus *bus, const char **ret_owner, uid_t *ret_uid) {
        Peer *p = peer_find(b, bus);

        if (!p)
                return 0;
        if (ret_owner)
                *ret_owner = p->owner;
        if (ret_uid)
                *ret_uid = p->uid;
        return 1;
}
