/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* One VFIO group of the host, as the broker shows it. */

#include <stdbool.h>

#include "broker.h"

struct Group {
        Broker *broker;
        unsigned id;
        char *path;          /* /org/vfiobroker/Broker1/group/<id> */
        char **devices;
        bool viable;
        Container *container; /* attached to, or NULL */

        ChangeLink changed;   /* queued for coalesced change delivery (broker.c) */
};

int group_new(Broker *b, const BackendGroupInfo *info, Group **ret);
Group *group_free(Group *g);
DEFINE_TRIVIAL_CLEANUP_FUNC(Group *, group_free);

/* Re-reads devices and viability from the backend (viability changes as drivers are bound).
 * Returns 1 if anything changed, and then reports it (broker_group_changed()); 0 if nothing did. */
int group_refresh(Group *g);

bool group_has_device(const Group *g, const char *device);

/* "0000:01:00.0,0000:01:00.1", for polkit details and messages. */
char *group_devices_joined(const Group *g);
