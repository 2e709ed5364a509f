/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The state store: every container's kernel objects in the service manager's fd store, its state in a
 * file, both brought up to date before the reply to every change (it observes the logic). */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "container.h"
#include "fdstore.h"
#include "log.h"
#include "state.h"
#include "state-private.h"
#include "state-encode.h"

static void on_container_added(void *userdata, Container *c) {
        (void) state_save_container(c);
}

static void on_container_changed(void *userdata, Container *c, unsigned mask) {
        (void) state_save_container(c);
}

static void on_container_removed(void *userdata, Container *c) {
        /* Handed over: the next instance needs every fd and file as they are. */
        if (!c->broker->handing_over)
                state_forget_container(c);
}

static const BrokerObserver state_observer = {
        /* Saved before the reply: an acknowledged change must survive the daemon's death. */
        .coalesce = false,
        .container_added = on_container_added,
        .container_changed = on_container_changed,
        .container_removed = on_container_removed,
};

int state_setup(Broker *b, const char *state_dir) {
        int r;

        /* Without a service manager nobody would keep the fds, and a state file alone cannot bring a
         * container back. */
        if (!getenv("NOTIFY_SOCKET") || !state_dir)
                return 0;
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return log_warning_errno(-errno, "Cannot create %s, restarts will not keep VMs: %m", state_dir);
        r = fdstore_connect(&b->notify_fd);
        if (r < 0)
                return log_warning_errno(r, "Cannot connect to $NOTIFY_SOCKET, restarts will not keep VMs: %m");
        b->state_dir = strdup(state_dir);
        if (!b->state_dir)
                return -ENOMEM;
        r = broker_observe(b, &state_observer, b);
        return r < 0 ? r : 1;
}

bool strv_contains(char **l, const char *s) {
        for (; l && *l; l++)
                if (strcmp(*l, s) == 0)
                        return true;
        return false;
}

int strv_push(char ***l, const char *s) {
        size_t n = strv_length(*l);
        char **a = realloc(*l, (n + 2) * sizeof(char *));
        if (!a)
                return -ENOMEM;
        *l = a;
        a[n] = strdup(s);
        a[n + 1] = NULL;
        return a[n] ? 0 : -ENOMEM;
}

char *state_file(Broker *b, uint64_t id) {
        char *p;
        return asprintf(&p, "%s/container-%" PRIu64 ".json", b->state_dir, id) < 0 ? NULL : p;
}

/* Pushes the fds c needs and drops the ones it no longer has. Names: c<id>-container,
 * c<id>-group-<n>, c<id>-mem-<region>, c<id>-device-<n>-<k>. */
static int state_sync_fds(Container *c) {
        BackendFd *fds = NULL;
        size_t n_fds = 0;
        char **want = NULL;
        char name[96];
        int r;

        r = backend_container_get_fds(c->backend, &fds, &n_fds);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_fds; i++) {
                snprintf(name, sizeof(name), "c%" PRIu64 "-%s", c->id, fds[i].name);
                (void) strv_push(&want, name);
                if (!strv_contains(c->stored_fds, name) && fdstore_push(c->broker->notify_fd, name, fds[i].fd, fds[i].poll) >= 0)
                        (void) strv_push(&c->stored_fds, name);
        }
        for (MemoryRegion *m = memory_pool_first(c->memory); m; m = memory_region_next(m)) {
                snprintf(name, sizeof(name), "c%" PRIu64 "-mem-%u", c->id, memory_region_id(m));
                (void) strv_push(&want, name);
                if (!strv_contains(c->stored_fds, name) && fdstore_push(c->broker->notify_fd, name, memory_region_fd(m), true) >= 0)
                        (void) strv_push(&c->stored_fds, name);
        }
        free(fds);

        /* Whatever is stored but no longer wanted leaves the store. */
        char **keep = NULL;
        for (char **s = c->stored_fds; s && *s; s++) {
                if (strv_contains(want, *s))
                        (void) strv_push(&keep, *s);
                else
                        fdstore_remove(c->broker->notify_fd, *s);
        }
        strv_free(c->stored_fds);
        c->stored_fds = keep;
        strv_free(want);
        return 0;
}

int state_save_container(Container *c) {
        Broker *b = c->broker;
        _cleanup_free_ char *path = NULL, *tmp = NULL;
        FILE *f;
        int r;

        if (!b->state_dir)
                return 0;

        r = state_sync_fds(c);
        if (r < 0)
                return log_warning_errno(r, "Container %" PRIu64 ": cannot store its fds: %m", c->id);

        path = state_file(b, c->id);
        if (!path || asprintf(&tmp, "%s.tmp", path) < 0)
                return -ENOMEM;
        f = fopen(tmp, "we");
        if (!f)
                return log_warning_errno(-errno, "Cannot write %s: %m", tmp);
        r = state_encode(c, backend_name(b->backend), f);
        /* No fsync(): the state only has to survive the daemon's death, not the machine's (/run does
         * not survive a reboot, nor do the fds it describes), and the page cache outlives any process. */
        if (fflush(f) != 0 && r >= 0)
                r = -errno;
        fclose(f);
        /* rename() is atomic: the next instance reads the old state or the new one, never half. */
        if (r < 0 || rename(tmp, path) < 0) {
                r = r < 0 ? r : -errno;
                (void) unlink(tmp);
                return log_warning_errno(r, "Cannot save the state of container %" PRIu64 ": %m", c->id);
        }
        return 0;
}

void state_forget_container(Container *c) {
        _cleanup_free_ char *path = NULL;

        if (!c->broker->state_dir)
                return;
        for (char **s = c->stored_fds; s && *s; s++)
                fdstore_remove(c->broker->notify_fd, *s);
        path = state_file(c->broker, c->id);
        if (path)
                (void) unlink(path);
}

