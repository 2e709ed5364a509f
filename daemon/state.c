/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The state store: every container's kernel objects in the service manager's fd store, its state in a
 * file, both brought up to date before the reply to every change (it observes the logic).
 *
 * Every moment must be restorable, whenever the daemon dies: an fd enters the store before the state
 * that names it is in place, and leaves it only after the last state that named it is gone. Memory is
 * stored per open file (StoredFile), shared by all regions that map it; the memory pools report their
 * regions (MemoryPoolWatch), so keeping the store in sync costs nothing per mapping. */

#include <assert.h>
#include <fcntl.h>
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
#include "state-log.h"

/* Whether the store has room for n more fds of c's owner, keeping one place free: the next generation
 * of the state log enters the store before the old one leaves it. systemd refuses fds beyond
 * FileDescriptorStoreMax= without telling the daemon, and the next instance would tear the container
 * down: the request is refused instead, before anything changes. Files that linger unused make room
 * first. */
static int store_admit(Container *c, unsigned n, const char *what, BrokerError *e) {
        StateStore *s = c->broker->state;

        if (s->fdstore_max == 0)
                return 0;
        if (s->n_stored + n + 1 > s->fdstore_max)
                state_flush_removals(c->broker);
        if (s->n_stored + n + 1 <= s->fdstore_max)
                return 0;
        return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                "The service manager's fd store is full (FileDescriptorStoreMax=%u, %u of them "
                                "held for uid %u): %s that cannot be kept there would be lost at the next "
                                "restart. %s",
                                s->fdstore_max, state_charged_to(s, c->uid), (unsigned) c->uid, what,
                                n == 1 && strcmp(what, "memory") == 0 ?
                                "Map into memory files already mapped, or unmap first." :
                                "Close a container or unmap memory first.");
}

/* A Map that needs memory the store does not hold yet needs one more fd in it. */
static int on_region_admit(void *userdata, int fd, const MemoryFileInfo *info, BrokerError *e) {
        Container *c = userdata;

        if (state_file_find(c->broker->state, info->dev, info->ino, info->writable))
                return 0;
        return store_admit(c, 1, "memory", e);
}

static int on_admit_fds(void *userdata, Container *c, unsigned n, BrokerError *e) {
        return store_admit(c, n, "a group or device", e);
}

/* Appends r to the log; a failure means the next instance cannot restore what follows. */
static void log_append(Broker *b, StateRecord *r) {
        StateStore *s = b->state;

        if (!s->log)
                return;
        if (state_log_append(s->log, r) < 0 && !s->log_failed) {
                s->log_failed = true;
                log_error("The state log is full; changes from now on will not survive a restart.");
        }
}

void state_append(Broker *b, StateRecord *r) {
        log_append(b, r);
}

/* The record of a region of c; false for a region whose file is not in the store. */
static bool region_record(Container *c, MemoryRegion *region, bool added, StateRecord *ret) {
        StoredFile *f = memory_region_get_data(region);

        if (!f)
                return false;
        *ret = (StateRecord) {
                .type = added ? STATE_RECORD_REGION_ADD : STATE_RECORD_REGION_DEL,
                .container = c->id,
                .region.id = memory_region_id(region),
                .region.flags = memory_region_flags(region),
        };
        memcpy(ret->region.file, f->name, sizeof(ret->region.file));
        return true;
}

static void log_region(Container *c, MemoryRegion *region, bool added) {
        StateRecord r;

        if (!region_record(c, region, added, &r))
                return;
        log_append(c->broker, &r);
        c->broker->state->live += added ? 1 : -1;
}

static void on_region_added(void *userdata, MemoryRegion *region) {
        Container *c = userdata;
        Broker *b = c->broker;
        StateStore *s = b->state;
        struct stat st;
        StoredFile *f;
        int w, fd = memory_region_fd(region);

        w = state_fd_writable(fd);
        if (w < 0 || fstat(fd, &st) < 0)
                return (void) log_warning("Container %" PRIu64 ": cannot identify a memory fd; it will not "
                                          "survive a restart.", c->id);
        f = state_file_find(s, st.st_dev, st.st_ino, w);
        if (f) {
                f->n_ref++; /* wanted again before its removal went out: it stays */
                memory_region_set_data(region, f);
                log_region(c, region, true);
                return;
        }

        f = calloc(1, sizeof(*f));
        if (!f)
                return (void) log_oom();
        f->dev = st.st_dev;
        f->ino = st.st_ino;
        f->writable = w;
        f->uid = c->uid;
        if (state_file_insert(s, f) < 0) {
                free(f);
                return (void) log_oom();
        }
        f->n_ref = 1;
        snprintf(f->name, sizeof(f->name), "m%" PRIu64, s->next_file++);
        /* In the store before any state names it. */
        if (fdstore_push(b->notify_fd, f->name, fd, true) >= 0)
                state_charge(b, f->uid, +1);
        memory_region_set_data(region, f);
        log_region(c, region, true);
}

static void on_region_removed(void *userdata, MemoryRegion *region) {
        Container *c = userdata;
        StoredFile *f = memory_region_get_data(region);

        if (!f)
                return;
        log_region(c, region, false);
        state_file_unref(c->broker, f);
}

static const MemoryPoolWatch state_memory_watch = {
        .region_admit = on_region_admit,
        .region_added = on_region_added,
        .region_removed = on_region_removed,
};

/* A container whose state is gone: its memory files leave the store as its regions go. */
static void on_forgotten_region_removed(void *userdata, MemoryRegion *region) {
        Container *c = userdata;
        StoredFile *f = memory_region_get_data(region);

        /* No record: the container's GONE is committed already. */
        if (f)
                state_file_unref(c->broker, f);
        state_flush_removals(c->broker);
}

static const MemoryPoolWatch state_forgotten_memory_watch = {
        .region_removed = on_forgotten_region_removed,
};

void state_watch_memory(Container *c) {
        memory_pool_set_watch(c->memory, &state_memory_watch, c);
}

static void on_mapping(Container *c, const Mapping *m, bool added) {
        StateRecord r = {
                .type = added ? STATE_RECORD_MAP_ADD : STATE_RECORD_MAP_DEL,
                .container = c->id,
                .map.iova = m->node.first,
        };

        if (added) {
                r.map.size = mapping_table_node_size(&m->node);
                r.map.offset = mapping_offset(m);
                r.map.region = memory_region_id(memory_window_region(m->window));
                r.map.flags = mapping_flags(m);
        }
        log_append(c->broker, &r);
        c->broker->state->live += added ? 1 : -1;
}

static void on_mapping_added(void *userdata, Container *c, const Mapping *m) {
        on_mapping(c, m, true);
}

static void on_mapping_removed(void *userdata, Container *c, const Mapping *m) {
        on_mapping(c, m, false);
}

static void on_container_added(void *userdata, Container *c) {
        state_watch_memory(c);
        (void) state_save_container(c, true);
}

static void on_container_changed(void *userdata, Container *c, unsigned mask) {
        /* Mappings are in the log already, record by record; the head (groups, discardable regions,
         * dirty tracking) only when it changed. */
        (void) state_save_container(c, mask & ~CONTAINER_CHANGE_MAPPINGS);
}

static void on_container_removed(void *userdata, Container *c) {
        /* Handed over: the next instance needs every fd and file as they are. */
        if (c->broker->handing_over)
                memory_pool_set_watch(c->memory, NULL, NULL);
        else
                state_forget_container(c);
}

static void on_done(void *userdata) {
        Broker *b = userdata;
        StateStore *s = b->state;

        if (!s)
                return;
        sd_event_source_disable_unref(s->linger);
        state_files_free(s);
        state_log_free(s->log);
        free(s);
        b->state = NULL;
}

static const BrokerObserver state_observer = {
        /* Saved before the reply: an acknowledged change must survive the daemon's death. */
        .coalesce = false,
        .container_added = on_container_added,
        .container_changed = on_container_changed,
        .container_removed = on_container_removed,
        .mapping_added = on_mapping_added,
        .mapping_removed = on_mapping_removed,
        .admit_fds = on_admit_fds,
        .done = on_done,
};

int state_setup(Broker *b, const char *state_dir, unsigned fdstore_max) {
        int r;

        /* Without a service manager nobody would keep the fds, and a state file alone cannot bring a
         * container back. An empty --state-dir= turns persistence off. */
        if (!getenv("NOTIFY_SOCKET") || !state_dir || !state_dir[0])
                return 0;
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return log_warning_errno(-errno, "Cannot create %s, restarts will not keep VMs: %m", state_dir);
        r = fdstore_connect(&b->notify_fd);
        if (r < 0)
                return log_warning_errno(r, "Cannot connect to $NOTIFY_SOCKET, restarts will not keep VMs: %m");
        b->state = calloc(1, sizeof(StateStore));
        if (!b->state)
                return -ENOMEM;
        b->state->fdstore_max = fdstore_max;
        b->state_dir = strdup(state_dir);
        if (!b->state_dir)
                return -ENOMEM;
        /* The face's sessions, watched before the logic: the face then hears of a container's removal
         * first, and its sessions are recorded gone before the container is. */
        r = vfio_user_watch(b, &state_vfio_user_watch, b);
        if (r < 0)
                return r;
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

/* The fds named prefix<name> that the store must hold from now on: the ones not in *stored go in now,
 * before the state that names them. Returns in *ret_drop the names to remove once the new state is in
 * place. */
int state_sync_fds(Broker *b, uid_t uid, const char *prefix, const BackendFd *fds, size_t n_fds, char ***stored,
                   char ***ret_drop) {
        _cleanup_strv_free_ char **want = NULL;
        char name[96];

        for (size_t i = 0; i < n_fds; i++) {
                snprintf(name, sizeof(name), "%s%s", prefix, fds[i].name);
                if (strv_push(&want, name) < 0)
                        return -ENOMEM;
                if (!strv_contains(*stored, name) && fdstore_push(b->notify_fd, name, fds[i].fd, fds[i].poll) >= 0) {
                        if (strv_push(stored, name) < 0)
                                return -ENOMEM;
                        state_charge(b, uid, +1);
                }
        }

        char **keep = NULL, **drop = NULL;
        for (char **s = *stored; s && *s; s++)
                if (strv_push(strv_contains(want, *s) ? &keep : &drop, *s) < 0) {
                        strv_free(keep);
                        strv_free(drop);
                        return -ENOMEM;
                }
        strv_free(*stored);
        *stored = keep;
        *ret_drop = drop;
        return 0;
}

/* The backend's fds (a handful: c<id>-container, c<id>-group-<n>, c<id>-device-<n>-<k>). */
int state_push_backend_fds(Container *c, char ***ret_drop) {
        _cleanup_free_ BackendFd *fds = NULL;
        size_t n_fds = 0;
        char prefix[32];
        int r;

        r = backend_container_get_fds(c->backend, &fds, &n_fds);
        if (r < 0)
                return r;
        snprintf(prefix, sizeof(prefix), "c%" PRIu64 "-", c->id);
        return state_sync_fds(c->broker, c->uid, prefix, fds, n_fds, &c->stored_fds, ret_drop);
}

void state_remove_names(Broker *b, uid_t uid, char **names) {
        for (char **s = names; s && *s; s++) {
                fdstore_remove(b->notify_fd, *s);
                state_charge(b, uid, -1);
        }
}

void state_remove_fds(Container *c, char **names) {
        state_remove_names(c->broker, c->uid, names);
}

static int log_head(Container *c) {
        _cleanup_free_ char *text = NULL;
        size_t length = 0;
        FILE *f;
        int r;

        f = open_memstream(&text, &length);
        if (!f)
                return -ENOMEM;
        r = state_encode_head(c, backend_name(c->broker->backend), f);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0)
                return r;
        r = state_log_append_head(c->broker->state->log, c->id, text, length);
        if (r < 0 && !c->broker->state->log_failed) {
                c->broker->state->log_failed = true;
                log_error("The state log is full; changes from now on will not survive a restart.");
        }
        return r;
}

/* The end of a request: what it appended counts from now on. Then what no committed state names
 * leaves the store, and the log is compacted when it holds more than twice what is live. */
void state_commit(Broker *b) {
        StateStore *s = b->state;

        if (!s->log)
                return;
        state_log_commit(s->log);
        state_flush_removals_later(b);
        if (state_log_used(s->log) > 2 * s->live + 65536 || state_log_used(s->log) > state_log_capacity(s->log) / 2)
                (void) state_log_rewrite(b);
}

int state_save_container(Container *c, bool head) {
        Broker *b = c->broker;
        _cleanup_strv_free_ char **drop = NULL;
        int r;

        if (!b->state_dir || !b->state)
                return 0;

        if (head) {
                r = state_push_backend_fds(c, &drop);
                if (r < 0)
                        return log_warning_errno(r, "Container %" PRIu64 ": cannot store its fds: %m", c->id);
                if (b->state->log)
                        (void) log_head(c);
        }
        state_commit(b);
        /* Only now that no committed state names them may fds leave the store. */
        state_remove_fds(c, drop);
        return 0;
}

void state_forget_container(Container *c) {
        _cleanup_free_ char *path = NULL;

        if (!c->broker->state_dir || !c->broker->state)
                return;
        /* The state first, then the fds it names. */
        if (c->broker->state->log) {
                StateRecord r = { .type = STATE_RECORD_GONE, .container = c->id };
                log_append(c->broker, &r);
                c->broker->state->live -= 2 + memory_pool_size(c->memory) + container_n_mappings(c);
                state_log_commit(c->broker->state->log);
        }
        path = state_file(c->broker, c->id); /* left by an older daemon */
        if (path)
                (void) unlink(path);
        state_remove_fds(c, c->stored_fds);
        strv_free(c->stored_fds);
        c->stored_fds = NULL;
        state_flush_removals(c->broker);
        /* Its memory goes after this (container_free()): those files leave the store as they go, if
         * nobody else uses them. */
        memory_pool_set_watch(c->memory, &state_forgotten_memory_watch, c);
}

int state_log_rewrite(Broker *b) {
        StateStore *s = b->state;
        _cleanup_(state_log_freep) StateLog *l = NULL;
        uint64_t generation = s->generation + 1, live = 0;
        char name[64];
        int r;

        /* The new generation enters the store before the old one leaves it. systemd would refuse it
         * silently beyond FileDescriptorStoreMax= (a group or device fd can take the place kept free
         * for it), and removing the old one then would lose everything: go on with the old one. */
        if (s->log && s->fdstore_max > 0 && s->n_stored + 1 > s->fdstore_max) {
                log_warning("The fd store is full (FileDescriptorStoreMax=%u); the state log is not compacted.",
                            s->fdstore_max);
                return -ENOSPC;
        }

        /* Room for twice the live state and a request of 65535 maps and unmaps on top. */
        r = state_log_new(generation, UINT64_C(1) << 23, &l);
        if (r < 0)
                return log_error_errno(r, "Cannot create a state log: %m");

        StateLog *old = s->log;
        s->log = l;
        for (Container *c = b->containers; c; c = c->next) {
                r = log_head(c);
                live += 2;
                for (MemoryRegion *m = memory_pool_first(c->memory); m && r >= 0; m = memory_region_next(m)) {
                        StateRecord x;
                        if (!region_record(c, m, true, &x))
                                continue;
                        r = state_log_append(l, &x);
                        live++;
                }
                for (MappingTableNode *node = mapping_table_first(&c->mappings); node && r >= 0;
                     node = mapping_table_next(node)) {
                        on_mapping(c, container_of(node, Mapping, node), true);
                        live++;
                }
                if (r >= 0) {
                        r = state_log_vfio_user_snapshot(l, c);
                        live += r > 0 ? (uint64_t) r : 0;
                }
                if (r < 0)
                        break;
        }
        s->log = old;
        if (r < 0)
                return log_error_errno(r, "Cannot write the state log: %m");
        state_log_commit(l);
        s->live = live;

        /* The new generation in the store, complete, before the old one leaves it: a new instance
         * takes the highest. */
        snprintf(name, sizeof(name), "state-%" PRIu64, generation);
        r = fdstore_push(b->notify_fd, name, state_log_fd(l), true);
        if (r < 0)
                return log_error_errno(r, "Cannot store the state log: %m");
        state_charge(b, 0, +1);
        if (old) {
                snprintf(name, sizeof(name), "state-%" PRIu64, state_log_generation(old));
                fdstore_remove(b->notify_fd, name);
                state_charge(b, 0, -1);
                state_log_free(old);
        }
        s->log = TAKE_PTR(l);
        s->generation = generation;
        s->log_failed = false;
        return 0;
}
