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

static size_t file_hash(dev_t dev, ino_t ino, bool writable, size_t n_buckets) {
        uint64_t h = ((uint64_t) dev * UINT64_C(0x9e3779b97f4a7c15)) ^ ((uint64_t) ino * UINT64_C(0xc2b2ae3d27d4eb4f)) ^
                     (uint64_t) writable;
        h ^= h >> 29;
        return (size_t) (h % n_buckets);
}

static StoredFile *file_find(StateStore *s, dev_t dev, ino_t ino, bool writable) {
        if (s->n_buckets == 0)
                return NULL;
        for (StoredFile *f = s->buckets[file_hash(dev, ino, writable, s->n_buckets)]; f; f = f->hash_next)
                if (f->dev == dev && f->ino == ino && f->writable == writable)
                        return f;
        return NULL;
}

static int file_insert(StateStore *s, StoredFile *f) {
        if (s->n_files + 1 > s->n_buckets) {
                size_t n = s->n_buckets ? s->n_buckets * 2 : 64;
                StoredFile **b = calloc(n, sizeof(StoredFile *));
                if (!b)
                        return -ENOMEM;
                for (size_t i = 0; i < s->n_buckets; i++)
                        for (StoredFile *x = s->buckets[i], *next; x; x = next) {
                                next = x->hash_next;
                                size_t h = file_hash(x->dev, x->ino, x->writable, n);
                                x->hash_next = b[h];
                                b[h] = x;
                        }
                free(s->buckets);
                s->buckets = b;
                s->n_buckets = n;
        }
        size_t h = file_hash(f->dev, f->ino, f->writable, s->n_buckets);
        f->hash_next = s->buckets[h];
        s->buckets[h] = f;
        s->n_files++;
        return 0;
}

static void file_unlink(StateStore *s, StoredFile *f) {
        for (StoredFile **p = &s->buckets[file_hash(f->dev, f->ino, f->writable, s->n_buckets)]; *p; p = &(*p)->hash_next)
                if (*p == f) {
                        *p = f->hash_next;
                        s->n_files--;
                        return;
                }
}

void state_charge(Broker *b, uid_t uid, int delta) {
        StateStore *s = b->state;

        s->n_stored += delta;
        for (size_t i = 0; i < s->n_charges; i++)
                if (s->charges[i].uid == uid) {
                        s->charges[i].n_fds += delta;
                        return;
                }
        if (delta <= 0)
                return;
        UidCharge *a = realloc(s->charges, (s->n_charges + 1) * sizeof(UidCharge));
        if (!a)
                return; /* the total still counts; only the per-user figure in messages is missing */
        s->charges = a;
        s->charges[s->n_charges++] = (UidCharge) { .uid = uid, .n_fds = (unsigned) delta };
}

static unsigned charged_to(StateStore *s, uid_t uid) {
        for (size_t i = 0; i < s->n_charges; i++)
                if (s->charges[i].uid == uid)
                        return s->charges[i].n_fds;
        return 0;
}

static int fd_writable(int fd) {
        int fl = fcntl(fd, F_GETFL);
        return fl < 0 ? -errno : (fl & O_ACCMODE) == O_RDWR;
}

/* A Map that needs memory the store does not hold yet needs one more fd in it. systemd refuses fds
 * beyond FileDescriptorStoreMax= without telling the daemon, and the next instance would tear the
 * container down: refuse the Map instead, before anything changes. */
static int on_region_admit(void *userdata, int fd, const MemoryFileInfo *info, BrokerError *e) {
        Container *c = userdata;
        StateStore *s = c->broker->state;

        if (s->fdstore_max == 0 || file_find(s, info->dev, info->ino, info->writable))
                return 0;
        if (s->n_stored + 1 <= s->fdstore_max)
                return 0;
        return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED,
                                "The service manager's fd store is full (FileDescriptorStoreMax=%u, %u of them "
                                "held for uid %u): memory that cannot be kept there would be lost at the next "
                                "restart. Map into memory files already mapped, or unmap first.",
                                s->fdstore_max, charged_to(s, c->uid), (unsigned) c->uid);
}

static void on_region_added(void *userdata, MemoryRegion *region) {
        Container *c = userdata;
        Broker *b = c->broker;
        StateStore *s = b->state;
        struct stat st;
        StoredFile *f;
        int w, fd = memory_region_fd(region);

        w = fd_writable(fd);
        if (w < 0 || fstat(fd, &st) < 0)
                return (void) log_warning("Container %" PRIu64 ": cannot identify a memory fd; it will not "
                                          "survive a restart.", c->id);
        f = file_find(s, st.st_dev, st.st_ino, w);
        if (f) {
                if (f->pending) /* wanted again before its removal went out: it stays */
                        f->pending = false;
                f->n_ref++;
                memory_region_set_data(region, f);
                return;
        }

        f = calloc(1, sizeof(*f));
        if (!f)
                return (void) log_oom();
        f->dev = st.st_dev;
        f->ino = st.st_ino;
        f->writable = w;
        f->uid = c->uid;
        if (file_insert(s, f) < 0) {
                free(f);
                return (void) log_oom();
        }
        f->n_ref = 1;
        snprintf(f->name, sizeof(f->name), "m%" PRIu64, s->next_file++);
        /* In the store before any state names it. */
        if (fdstore_push(b->notify_fd, f->name, fd, true) >= 0)
                state_charge(b, f->uid, +1);
        memory_region_set_data(region, f);
}

static void file_unref(Broker *b, StoredFile *f) {
        StateStore *s = b->state;

        assert(f->n_ref > 0);
        if (--f->n_ref > 0 || f->pending)
                return;
        /* Saved state may still name it: it leaves the store after the next save. */
        f->pending = true;
        f->pending_next = s->pending;
        s->pending = f;
}

static void on_region_removed(void *userdata, MemoryRegion *region) {
        Container *c = userdata;
        StoredFile *f = memory_region_get_data(region);

        if (f)
                file_unref(c->broker, f);
}

static const MemoryPoolWatch state_memory_watch = {
        .region_admit = on_region_admit,
        .region_added = on_region_added,
        .region_removed = on_region_removed,
};

/* A container whose state is gone: its memory files leave the store as its regions go. */
static void on_forgotten_region_removed(void *userdata, MemoryRegion *region) {
        Container *c = userdata;

        on_region_removed(userdata, region);
        state_flush_removals(c->broker);
}

static const MemoryPoolWatch state_forgotten_memory_watch = {
        .region_removed = on_forgotten_region_removed,
};

void state_watch_memory(Container *c) {
        memory_pool_set_watch(c->memory, &state_memory_watch, c);
}

void state_flush_removals(Broker *b) {
        StateStore *s = b->state;
        StoredFile *f;

        if (!s || s->restoring)
                return;
        while ((f = s->pending)) {
                s->pending = f->pending_next;
                if (!f->pending)
                        continue; /* taken again */
                if (f->n_ref == 0) {
                        fdstore_remove(b->notify_fd, f->name);
                        state_charge(b, f->uid, -1);
                        file_unlink(s, f);
                        free(f);
                } else
                        f->pending = false;
        }
}

int state_file_adopt(Broker *b, Container *c, MemoryRegion *region, const char *name, int fd) {
        StateStore *s = b->state;
        struct stat st;
        StoredFile *f;
        int w;

        w = fd_writable(fd);
        if (w < 0)
                return w;
        if (fstat(fd, &st) < 0)
                return -errno;
        f = file_find(s, st.st_dev, st.st_ino, w);
        if (!f) {
                f = calloc(1, sizeof(*f));
                if (!f)
                        return -ENOMEM;
                f->dev = st.st_dev;
                f->ino = st.st_ino;
                f->writable = w;
                f->uid = c->uid;
                if (file_insert(s, f) < 0) {
                        free(f);
                        return -ENOMEM;
                }
                snprintf(f->name, sizeof(f->name), "%s", name);
                state_charge(b, f->uid, +1);
                uint64_t n;
                char *end;
                if (name[0] == 'm' && (n = strtoull(name + 1, &end, 10), *end == 0) && n >= s->next_file)
                        s->next_file = n + 1;
        } else if (strcmp(f->name, name) != 0)
                /* The same open file under two names (an older daemon stored it per region): the second
                 * is not needed. It leaves the store with the unreferenced fds. */
                log_debug("Stored fds %s and %s are the same memory file.", f->name, name);
        if (f->pending)
                f->pending = false;
        f->n_ref++;
        memory_region_set_data(region, f);
        return 0;
}

bool state_file_named(Broker *b, const char *name) {
        StateStore *s = b->state;

        for (size_t i = 0; s && i < s->n_buckets; i++)
                for (StoredFile *f = s->buckets[i]; f; f = f->hash_next)
                        if (strcmp(f->name, name) == 0)
                                return true;
        return false;
}

static void on_container_added(void *userdata, Container *c) {
        state_watch_memory(c);
        (void) state_save_container(c);
}

static void on_container_changed(void *userdata, Container *c, unsigned mask) {
        (void) state_save_container(c);
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
        for (size_t i = 0; i < s->n_buckets; i++)
                for (StoredFile *f = s->buckets[i], *next; f; f = next) {
                        next = f->hash_next;
                        free(f);
                }
        free(s->buckets);
        free(s->charges);
        free(s);
        b->state = NULL;
}

static const BrokerObserver state_observer = {
        /* Saved before the reply: an acknowledged change must survive the daemon's death. */
        .coalesce = false,
        .container_added = on_container_added,
        .container_changed = on_container_changed,
        .container_removed = on_container_removed,
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

/* The backend's fds (a handful: c<id>-container, c<id>-group-<n>, c<id>-device-<n>-<k>): the ones c
 * needs and does not have in the store go in now, before the state that names them. Returns in
 * *ret_drop the names to remove once the new state is in place. */
static int state_push_backend_fds(Container *c, char ***ret_drop) {
        _cleanup_free_ BackendFd *fds = NULL;
        _cleanup_strv_free_ char **want = NULL;
        size_t n_fds = 0;
        char name[96];
        int r;

        r = backend_container_get_fds(c->backend, &fds, &n_fds);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_fds; i++) {
                snprintf(name, sizeof(name), "c%" PRIu64 "-%s", c->id, fds[i].name);
                if (strv_push(&want, name) < 0)
                        return -ENOMEM;
                if (!strv_contains(c->stored_fds, name) &&
                    fdstore_push(c->broker->notify_fd, name, fds[i].fd, fds[i].poll) >= 0) {
                        if (strv_push(&c->stored_fds, name) < 0)
                                return -ENOMEM;
                        state_charge(c->broker, c->uid, +1);
                }
        }

        char **keep = NULL, **drop = NULL;
        for (char **s = c->stored_fds; s && *s; s++)
                if (strv_push(strv_contains(want, *s) ? &keep : &drop, *s) < 0) {
                        strv_free(keep);
                        strv_free(drop);
                        return -ENOMEM;
                }
        strv_free(c->stored_fds);
        c->stored_fds = keep;
        *ret_drop = drop;
        return 0;
}

static void state_remove_fds(Container *c, char **names) {
        for (char **s = names; s && *s; s++) {
                fdstore_remove(c->broker->notify_fd, *s);
                state_charge(c->broker, c->uid, -1);
        }
}

int state_save_container(Container *c) {
        Broker *b = c->broker;
        _cleanup_free_ char *path = NULL, *tmp = NULL;
        _cleanup_strv_free_ char **drop = NULL;
        FILE *f;
        int r;

        if (!b->state_dir)
                return 0;

        r = state_push_backend_fds(c, &drop);
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

        /* Only now that no state names them may fds leave the store. */
        state_remove_fds(c, drop);
        state_flush_removals(b);
        return 0;
}

void state_forget_container(Container *c) {
        _cleanup_free_ char *path = NULL;

        if (!c->broker->state_dir)
                return;
        /* The state first, then the fds it names. */
        path = state_file(c->broker, c->id);
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
