/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The devices of a container's groups: OpenDevice, HotReset. */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container-private.h"
#include "group.h"
#include "log.h"

/* The group of a device that this container may use. */
int container_device_group(Container *c, const char *device, Group **ret, BrokerError *e) {
        Group *g;

        g = broker_find_group_of_device(c->broker, device);
        if (!g)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE,
                                        "There is no device \"%s\" in any VFIO group on this host.", device);
        if (g->container != c)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE,
                                        "Device %s is in VFIO group %u, which is not attached to this "
                                        "container; AttachGroup(%u) first.", device, g->id, g->id);
        *ret = g;
        return 0;
}

int container_open_device(Container *c, const char *device, BrokerError *e) {
        Group *g = NULL;
        int r;

        r = container_device_group(c, device, &g, e);
        if (r < 0)
                return r;
        /* The sim keeps its end of each device in the fd store. */
        r = broker_admit_fds(c->broker, c, 1, e);
        if (r < 0)
                return r;

        int fd = backend_container_open_device(c->backend, g->id, device);
        if (fd < 0)
                return container_backend_error(c, BACKEND_OPERATION_GET_DEVICE_FD, fd,
                                               &(BackendErrorContext) { .group = g->id, .device = device }, e);
        /* The sim's device ends must survive a restart to keep the group busy. */
        broker_container_changed(c->broker, c, CONTAINER_CHANGE_FDS);
        return fd;
}

int container_hot_reset(Container *c, const char *device, BrokerError *e) {
        Broker *b = c->broker;
        _cleanup_free_ unsigned *groups = NULL;
        _cleanup_free_ BackendContainer **owners = NULL;
        _cleanup_free_ char *blocked = NULL;
        size_t n = 0, blocked_len = 0;
        FILE *f;
        Group *g = NULL;
        int r;

        r = container_device_group(c, device, &g, e);
        if (r < 0)
                return r;

        r = backend_container_hot_reset_groups(c->backend, g->id, device, &groups, &n);
        if (r < 0)
                return container_backend_error(c, BACKEND_OPERATION_GET_HOT_RESET_GROUPS, r,
                                               &(BackendErrorContext) { .group = g->id, .device = device }, e);

        owners = calloc(n + 1, sizeof(BackendContainer *));
        f = open_memstream(&blocked, &blocked_len);
        if (!owners || !f) {
                if (f)
                        fclose(f);
                return -ENOMEM;
        }
        /* The kernel resets only with the fd of every group the reset touches; the broker lends the
         * fds of groups that the same owner holds, never anybody else's. */
        for (size_t i = 0; i < n; i++) {
                Group *o = broker_find_group(b, groups[i]);
                if (o && o->container && strcmp(o->container->owner, c->owner) == 0) {
                        owners[i] = o->container->backend;
                        continue;
                }
                fprintf(f, "%s%u (%s)", ftell(f) > 0 ? ", " : "", groups[i],
                        !o ? "not a VFIO group the broker knows" :
                        o->container ? "attached to another owner's container" : "not attached to a container");
        }
        fclose(f);
        if (blocked && blocked[0])
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "A hot reset of %s also resets the devices of VFIO groups %s; attach "
                                        "each of them to a container of yours first.", device, blocked);

        r = backend_container_hot_reset(c->backend, g->id, device, owners, groups, n);
        if (r < 0)
                return container_backend_error(c, BACKEND_OPERATION_PCI_HOT_RESET, r,
                                               &(BackendErrorContext) { .group = g->id, .device = device }, e);
        log_info("Container %" PRIu64 " (%s, uid %u): PCI hot reset of %s (%zu groups).", c->id, c->label,
                 c->uid, device, n);
        return 0;
}
