/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The state store's table of memory files in the fd store (StoredFile, keyed by open file), and the
 * count of fds in the store, charged to their owners. */

#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "event-util.h"
#include "fdstore.h"
#include "log.h"
#include "state-private.h"

static size_t file_hash(dev_t dev, ino_t ino, bool writable, size_t n_buckets) {
        uint64_t h = ((uint64_t) dev * UINT64_C(0x9e3779b97f4a7c15)) ^ ((uint64_t) ino * UINT64_C(0xc2b2ae3d27d4eb4f)) ^
                     (uint64_t) writable;
        h ^= h >> 29;
        return (size_t) (h % n_buckets);
}

StoredFile *state_file_find(StateStore *s, dev_t dev, ino_t ino, bool writable) {
        if (s->n_buckets == 0)
                return NULL;
        for (StoredFile *f = s->buckets[file_hash(dev, ino, writable, s->n_buckets)]; f; f = f->hash_next)
                if (f->dev == dev && f->ino == ino && f->writable == writable)
                        return f;
        return NULL;
}

int state_file_insert(StateStore *s, StoredFile *f) {
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

unsigned state_charged_to(StateStore *s, uid_t uid) {
        for (size_t i = 0; i < s->n_charges; i++)
                if (s->charges[i].uid == uid)
                        return s->charges[i].n_fds;
        return 0;
}

int state_fd_writable(int fd) {
        int fl = fcntl(fd, F_GETFL);
        return fl < 0 ? -errno : (fl & O_ACCMODE) == O_RDWR;
}

void state_file_unref(Broker *b, StoredFile *f) {
        StateStore *s = b->state;

        assert(f->n_ref > 0);
        if (--f->n_ref > 0 || f->pending)
                return;
        /* Saved state may still name it: it leaves the store after the next save (and a while later,
         * see state_flush_removals_later()), unless a region takes it again meanwhile. On the list at
         * most once: pending says it is there. */
        f->pending = true;
        f->pending_next = s->pending;
        s->pending = f;
}

void state_flush_removals(Broker *b) {
        StateStore *s = b->state;
        StoredFile *f;

        if (!s || s->restoring)
                return;
        while ((f = s->pending)) {
                s->pending = f->pending_next;
                f->pending = false;
                if (f->n_ref > 0)
                        continue; /* taken again */
                fdstore_remove(b->notify_fd, f->name);
                state_charge(b, f->uid, -1);
                file_unlink(s, f);
                free(f);
        }
}

static int on_linger(sd_event_source *source, uint64_t usec, void *userdata) {
        state_flush_removals(userdata);
        return 0;
}

void state_flush_removals_later(Broker *b) {
        StateStore *s = b->state;
        int r;

        if (!s || s->restoring || !s->pending)
                return;
        if (!b->event) {
                state_flush_removals(b);
                return;
        }
        if (event_is_armed(s->linger))
                return; /* the earliest pending file sets the time; the rest go with it */
        r = event_arm_oneshot_relative(b->event, &s->linger, STATE_LINGER_USEC, on_linger, b);
        if (r < 0)
                state_flush_removals(b);
}

int state_file_adopt(Broker *b, Container *c, MemoryRegion *region, const char *name, int fd) {
        StateStore *s = b->state;
        struct stat st;
        StoredFile *f;
        int w;

        w = state_fd_writable(fd);
        if (w < 0)
                return w;
        if (fstat(fd, &st) < 0)
                return -errno;
        f = state_file_find(s, st.st_dev, st.st_ino, w);
        if (!f) {
                f = calloc(1, sizeof(*f));
                if (!f)
                        return -ENOMEM;
                f->dev = st.st_dev;
                f->ino = st.st_ino;
                f->writable = w;
                f->uid = c->uid;
                if (strlen(name) >= sizeof(f->name)) {
                        free(f);
                        return -ENAMETOOLONG;
                }
                if (state_file_insert(s, f) < 0) {
                        free(f);
                        return -ENOMEM;
                }
                strcpy(f->name, name);
                state_charge(b, f->uid, +1);
                uint64_t n;
                char *end;
                if (name[0] == 'm' && (n = strtoull(name + 1, &end, 10), *end == 0) && n >= s->next_file)
                        s->next_file = n + 1;
        } else if (strcmp(f->name, name) != 0)
                /* The same open file under two names (an older daemon stored it per region): the second
                 * is not needed. It leaves the store with the unreferenced fds. */
                log_debug("Stored fds %s and %s are the same memory file.", f->name, name);
        f->n_ref++; /* if pending, the flush sees it taken again */
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

void state_files_free(StateStore *s) {
        for (size_t i = 0; i < s->n_buckets; i++)
                for (StoredFile *f = s->buckets[i], *next; f; f = next) {
                        next = f->hash_next;
                        free(f);
                }
        free(s->buckets);
        free(s->charges);
}
