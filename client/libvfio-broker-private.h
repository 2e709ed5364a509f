/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Shared by libvfio-broker's files only; its contract is vfio-broker/vfio-broker.h. The library is
 * split by concept: libvfio-broker.c (the handle, its bus and peer connection with the reconnect,
 * client_call() and the last error), libvfio-broker-events.c (event-loop integration and the
 * balloon signals), libvfio-broker-properties.c (the objects' property dicts read into the public
 * structs, and their free functions), libvfio-broker-list.c (GetManagedObjects listings, naming a
 * container by id or path), libvfio-broker-container.c (a container handle and its calls) and
 * libvfio-broker-update.c (Update, split to fit the transport's fd limit). The helpers below are
 * hidden like everything not marked _public_: the client_ prefix is outside the vfio_broker_*
 * pattern that libvfio-broker.sym exports. */

#include <stdbool.h>
#include <systemd/sd-bus.h>

#include "broker-wire.h"
#include "vfio-broker/vfio-broker.h"

#define BUS_NAME BROKER_BUS_NAME
#define ROOT_PATH BROKER_OBJECT_PATH
#define CONTAINER_PREFIX ROOT_PATH "/container/"
#define MANAGER_IFACE BUS_NAME ".Manager"
#define GROUP_IFACE BUS_NAME ".Group"
#define CONTAINER_IFACE BUS_NAME ".Container"

struct vfio_broker {
        unsigned n_ref;
        sd_bus *bus;          /* the system bus: signals, and calls when there is no peer connection */
        sd_bus *peer;         /* Manager.OpenConnection: calls without the bus daemon's round trip */
        bool owns_bus;
        char error_name[128];
        char error_message[512];
        sd_bus_slot *balloon_slot;
        vfio_broker_balloon_handler balloon_handler;
        void *balloon_userdata;
};

struct vfio_broker_container {
        vfio_broker *broker;
        char *path;
        sd_bus_slot *balloon_slot;
        vfio_broker_container_balloon_handler balloon_handler;
        void *balloon_userdata;
};

/* libvfio-broker.c */
void client_set_error(vfio_broker *b, const char *name, const char *message);
int client_fail_errno(vfio_broker *b, int r, const char *what);
int client_error_to_errno(const sd_bus_error *e, int r);
void client_open_peer(vfio_broker *b);
bool client_connection_lost(int r);
int client_call(vfio_broker *b, const char *path, const char *iface, const char *member, sd_bus_message **reply,
                const char *types, ...);

/* libvfio-broker-properties.c */
int client_parse_group(sd_bus_message *m, vfio_broker_group *g);
int client_parse_container(sd_bus_message *m, vfio_broker_container_info *c);
int client_container_info_by_path(vfio_broker *b, const char *path, vfio_broker_container_info *ret);

/* libvfio-broker-list.c */
int client_resolve_container_path(vfio_broker *b, const char *path_or_id, char **ret);
