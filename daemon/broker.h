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

#define BROKER_BUS_NAME      "org.vfiobroker.Broker1"
#define BROKER_OBJECT_PATH   "/org/vfiobroker/Broker1"
#define BROKER_GROUP_PREFIX  "/org/vfiobroker/Broker1/group"
#define BROKER_CONTAINER_PREFIX "/org/vfiobroker/Broker1/container"
#define BROKER_MANAGER_INTERFACE   "org.vfiobroker.Broker1.Manager"
#define BROKER_GROUP_INTERFACE     "org.vfiobroker.Broker1.Group"
#define BROKER_CONTAINER_INTERFACE "org.vfiobroker.Broker1.Container"

typedef struct UserUsage UserUsage;
typedef struct PolkitQuery PolkitQuery;
typedef struct OwnerWatch OwnerWatch;
typedef struct Peer Peer;

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

        char *state_dir;      /* persistence across restarts, NULL when off (state.c) */
        int notify_fd;        /* connected to $NOTIFY_SOCKET while state_dir is set (state.c) */
        bool handing_over;    /* exiting with every container left to the next instance */

        PolkitQuery *polkit_queries; /* authorization checks in flight, see polkit.c */
        OwnerWatch *owners;          /* one sd_bus_track per owning connection, see container-dbus.c */
        size_t n_owners;
        Peer *peers;                 /* peer-to-peer connections, see peer.c */
} Broker;

int broker_new(sd_event *event, Backend *backend, BrokerConfig *config, Broker **ret);
Broker *broker_free(Broker *b);
DEFINE_TRIVIAL_CLEANUP_FUNC(Broker *, broker_free);

/* Connects to the system bus ($DBUS_SYSTEM_BUS_ADDRESS honoured), registers the objects and requests
 * the name. */
int broker_connect_bus(Broker *b);

/* Re-reads the backend's groups, adding and removing Group objects. */
int broker_refresh_groups(Broker *b);

Group *broker_find_group(Broker *b, unsigned id);
Container *broker_find_container(Broker *b, uint64_t id);
/* The group that holds device name, or NULL. */
Group *broker_find_group_of_device(Broker *b, const char *device);

/* Whether a unique name is still on the bus (a synchronous call: not for the hot path). */
bool broker_name_has_owner(Broker *b, const char *name);

/* Called by container.c whenever a group is attached or detached anywhere. */
void broker_balloon_inhibitors_changed(Broker *b, int delta);
