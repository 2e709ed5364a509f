/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "group.h"
#include "log.h"

static char **strv_copy(char * const *l) {
        size_t n = strv_length(l);
        _cleanup_strv_free_ char **copy = calloc(n + 1, sizeof(char *));
        if (!copy)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                copy[i] = strdup(l[i]);
                if (!copy[i])
                        return NULL;
        }
        return TAKE_PTR(copy);
}

static bool strv_equal(char * const *a, char * const *b) {
        size_t n = strv_length(a);
        if (n != strv_length(b))
                return false;
        for (size_t i = 0; i < n; i++)
                if (strcmp(a[i], b[i]) != 0)
                        return false;
        return true;
}

int group_new(Broker *b, const BackendGroupInfo *info, Group **ret) {
        _cleanup_(group_freep) Group *g = NULL;

        assert(b);
        assert(info);
        assert(ret);

        g = calloc(1, sizeof(*g));
        if (!g)
                return -ENOMEM;
        g->broker = b;
        g->id = info->id;
        g->viable = info->viable;
        g->devices = strv_copy(info->devices);
        if (!g->devices)
                return -ENOMEM;
        if (asprintf(&g->path, BROKER_GROUP_PREFIX "/%u", g->id) < 0)
                return -ENOMEM;

        *ret = TAKE_PTR(g);
        return 0;
}

Group *group_free(Group *g) {
        if (!g)
                return NULL;
        assert(!g->container);
        strv_free(g->devices);
        free(g->path);
        free(g);
        return NULL;
}

int group_refresh(Group *g) {
        BackendGroupInfo info = {};
        bool changed;
        int r;

        assert(g);

        r = backend_get_group(g->broker->backend, g->id, &info);
        if (r < 0)
                return r;

        changed = info.viable != g->viable || !strv_equal(info.devices, g->devices);
        g->viable = info.viable;
        if (!strv_equal(info.devices, g->devices)) {
                strv_free(g->devices);
                g->devices = TAKE_PTR(info.devices);
        }
        strv_free(info.devices);
        if (!changed)
                return 0;

        /* Devices and Viable are cached by clients (they emit PropertiesChanged), so a change noticed
         * anywhere, by the device monitor or by the re-check at attach time, is reported. */
        log_debug("VFIO group %u changed: %s.", g->id, g->viable ? "viable" : "not viable");
        broker_group_changed(g->broker, g);
        return 1;
}

bool group_has_device(const Group *g, const char *device) {
        for (char **d = g->devices; d && *d; d++)
                if (strcmp(*d, device) == 0)
                        return true;
        return false;
}

char *group_devices_joined(const Group *g) {
        size_t len = 1;
        char *s, *p;

        for (char **d = g->devices; d && *d; d++)
                len += strlen(*d) + 1;
        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        for (char **d = g->devices; d && *d; d++)
                p += sprintf(p, "%s%s", d == g->devices ? "" : ",", *d);
        return s;
}
