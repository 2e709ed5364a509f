/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The daemon context: the one place that holds mutable state. Everything else hangs off it. */

#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "backend.h"
#include "config.h"

typedef struct Group Group;
typedef struct Container Container;
typedef struct Mapping Mapping;

#include "broker-wire.h"

/* What the logic tells its watchers (the D-Bus faces, the state store, later vfio-user and the journal).
 * The logic never calls a face: it reports through this one interface, and each face subscribes.
 *
 * Delivery: added/removed and balloon changes are reported at once (a removal before the object is
 * freed; the balloon state before the reply to the request that changed it). container_changed and
 * group_changed go at once to observers that need every change before the reply (persistence), and,
 * with coalesce set, once per event-loop iteration with the masks or-ed (one PropertiesChanged per
 * object, however many changes a request or an Update made), from the post source that ends every
 * iteration that did something. */
typedef struct BrokerObserver {
        bool coalesce;
        void (*container_added)(void *userdata, Container *c);
        void (*container_changed)(void *userdata, Container *c, unsigned mask); /* ContainerChange bits */
        void (*container_removed)(void *userdata, Container *c);
        void (*group_added)(void *userdata, Group *g);
        void (*group_changed)(void *userdata, Group *g);
        void (*group_removed)(void *userdata, Group *g);
        void (*balloon_changed)(void *userdata, bool flipped); /* flipped: BalloonInhibited changed too */
        /* The deltas, for the state store (O(1) persistence): reported at once, where the logic's
         * table of mappings changes, and followed by the container_changed that ends the request --
         * a failed request's rollback reports its undoing too, and no container_changed. A closing
         * container's mappings go without them (container_removed says it all). */
        void (*mapping_added)(void *userdata, Container *c, const Mapping *m);
        void (*mapping_removed)(void *userdata, Container *c, const Mapping *m);
        /* Asked before the logic makes up to n kernel fds for c that a watcher keeps (AttachGroup: a
         * group fd and maybe the container's; OpenDevice: a device fd the backend keeps). May refuse
         * with an error in e (the state store: the service manager's fd store has no room); then the
         * request changes nothing. */
        int (*admit_fds)(void *userdata, Container *c, unsigned n, BrokerError *e);
        /* The end of every event-loop iteration that did something, after the coalesced changes: for a
         * watcher of the whole state (main.c's STATUS=). */
        void (*iteration_end)(void *userdata);
        /* The broker goes away, every container closed already: release what the watcher holds. */
        void (*done)(void *userdata);
} BrokerObserver;

#define BROKER_OBSERVERS_MAX 8

/* An object's place in the queue of coalesced changes (embedded in Container and Group). */
typedef struct ChangeLink {
        struct ChangeLink *next;
        bool queued;
} ChangeLink;

typedef struct UserUsage UserUsage;
typedef struct PolkitRegistry PolkitRegistry;
typedef struct OwnerWatch OwnerWatch;
typedef struct Peer Peer;
typedef struct StateStore StateStore;

typedef struct Broker {
        sd_event *event;
        sd_bus *bus;          /* NULL in unit tests that drive the logic directly */
        Backend *backend;
        BrokerConfig *config;

        Group **groups;       /* sorted by id */
        size_t n_groups;

        Container *containers; /* list, newest first */
        size_t n_containers;
        uint64_t next_container_id;

        UserUsage *usage;     /* per-uid accounting, see quota.h */

        unsigned balloon_inhibitors; /* groups attached to containers, summed over all containers */

        struct {
                const BrokerObserver *ops;
                void *userdata;
        } observers[BROKER_OBSERVERS_MAX];
        size_t n_observers;
        /* One post source for the coalesced changes and iteration_end: a source each would cost an
         * event-loop iteration each after every call (one more syscall round, 3 rather than 2). */
        sd_event_source *iteration_end;
        ChangeLink *changed_containers; /* queued for coalesced delivery (Container.changed) */
        ChangeLink *changed_groups;     /* likewise (Group.changed) */

        char *state_dir;      /* persistence across restarts, NULL when off (state.c) */
        int notify_fd;        /* connected to $NOTIFY_SOCKET while state_dir is set (state.c) */
        bool handing_over;    /* exiting with every container left to the next instance */
        StateStore *state;    /* the memory files and the count of fds in the store (state.c) */

        PolkitRegistry *polkit;      /* authorization checks in flight, see polkit.h */
        OwnerWatch *owners;          /* one sd_bus_track per owning connection, see owner-watch.c */
        size_t n_owners;
        Peer *peers;                 /* peer-to-peer connections, see peer.c */
        size_t n_peers;
} Broker;

int broker_new(sd_event *event, Backend *backend, BrokerConfig *config, Broker **ret);
Broker *broker_free(Broker *b);
DEFINE_TRIVIAL_CLEANUP_FUNC(Broker *, broker_free);

/* Re-reads the backend's groups: Group objects added and removed (broker_group_added/removed), the
 * known ones refreshed (broker_group_changed when Devices or Viable changed). Called at startup and
 * whenever the host's devices change (device-monitor.c). */
int broker_refresh_groups(Broker *b);

Group *broker_find_group(Broker *b, unsigned id);
Container *broker_find_container(Broker *b, uint64_t id);
/* The group that holds device name, or NULL. */
Group *broker_find_group_of_device(Broker *b, const char *device);

/* Subscribes a watcher (see BrokerObserver). */
int broker_observe(Broker *b, const BrokerObserver *ops, void *userdata);

/* For the logic: report a change to every observer. */
void broker_container_added(Broker *b, Container *c);
void broker_container_changed(Broker *b, Container *c, unsigned mask);
void broker_container_removed(Broker *b, Container *c);
/* 0 if every observer admits n more kept fds for c, else the first refusal. */
int broker_admit_fds(Broker *b, Container *c, unsigned n, BrokerError *e);
void broker_group_added(Broker *b, Group *g);
void broker_group_changed(Broker *b, Group *g);
void broker_group_removed(Broker *b, Group *g);
/* For the logic: a mapping entered or left a container's table (see BrokerObserver). */
static inline void broker_mapping_added(Broker *b, Container *c, const Mapping *m) {
        for (size_t i = 0; i < b->n_observers; i++)
                if (b->observers[i].ops->mapping_added)
                        b->observers[i].ops->mapping_added(b->observers[i].userdata, c, m);
}
static inline void broker_mapping_removed(Broker *b, Container *c, const Mapping *m) {
        for (size_t i = 0; i < b->n_observers; i++)
                if (b->observers[i].ops->mapping_removed)
                        b->observers[i].ops->mapping_removed(b->observers[i].userdata, c, m);
}
/* Called by the container logic whenever a group is attached or detached anywhere. */
void broker_balloon_inhibitors_changed(Broker *b, int delta);
/* Delivers queued coalesced changes now (the post source does it once per iteration). */
void broker_flush_changes(Broker *b);
/* What the post source does at the end of every event-loop iteration that did something: the coalesced
 * changes, then the observers' iteration_end. Also for once before the loop runs. */
void broker_iteration_end(Broker *b);
