/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The encoding of one container's state, as the state store keeps it across restarts: pure functions,
 * no fds and no kernel. A JSON object: version, backend, id, owner, uid, label, groups, the memory
 * regions (id, flags, file: the FDNAME of the memory file), dirty_tracking, discardable regions as
 * [iova, size, region, offset, flags, granule] and mappings as [iova, size, region, offset, flags];
 * integers beyond INT64_MAX as "0x..." strings, since json-c's integers are int64. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "container.h"
#include "error.h"
#include "vfio-user-server.h"

#define STATE_VERSION 1

typedef struct StateRegion {
        uint32_t id;
        uint32_t flags;
        char file[40];  /* its memory in the fd store; "" for c<id>-mem-<id> (older daemons) */
} StateRegion;

typedef struct StateMapping {
        uint64_t iova, size, offset, granule; /* granule: discardable regions only */
        uint32_t region, flags;
} StateMapping;

/* A device the container serves over vfio-user, its client and the client's DMA table. */
typedef struct StateVfioUser {
        VfioUserSessionInfo info;
        VfioUserDmaInfo *dma;
        size_t n_dma;
} StateVfioUser;

typedef struct ContainerState {
        char *backend;
        uint64_t id;
        char *owner;
        uid_t uid;
        char *label;
        unsigned *groups;
        size_t n_groups;
        StateRegion *regions;
        size_t n_regions;
        StateMapping *discardable;
        size_t n_discardable;
        StateMapping *mappings;
        size_t n_mappings;
        bool dirty_tracking;
        StateVfioUser *vfio_user;  /* from the state log only */
        size_t n_vfio_user;
} ContainerState;


void container_state_done(ContainerState *s);

/* Writes c's state to f. */
int state_encode(const Container *c, const char *backend, FILE *f);
/* The same without regions and mappings: the HEAD record of the state log (state-log.h). */
int state_encode_head(const Container *c, const char *backend, FILE *f);

/* Parses and checks what state_encode() wrote: every field present and in range, group ids unique.
 * What it says is checked again against the kernel and the fds when it is restored. */
int state_decode(const char *text, ContainerState *ret, BrokerError *e);
/* What state_encode_head() wrote; regions and mappings must be absent. */
int state_decode_head(const char *text, ContainerState *ret, BrokerError *e);
