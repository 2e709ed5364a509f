/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Shared by state.c (the store) and state-restore.c. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-event.h>

#include "broker.h"
#include "container.h"
#include "state-log.h"
#include "vfio-user-server.h"

/* One open file of guest memory in the fd store. systemd keeps one fd per open file and suppresses a
 * second push of the same one ("Suppressing duplicate fd"), so memory is stored per file, not per
 * region: every region of every container that maps the file (dev, ino) through an fd of the same
 * access mode shares the entry. It leaves the store only once no saved state names it. */
typedef struct StoredFile StoredFile;
struct StoredFile {
        StoredFile *hash_next;
        StoredFile *pending_next;  /* on StateStore.pending: was unreferenced, removal due after the next save */
        bool pending;              /* on that list (once at most); removed then unless n_ref > 0 again */
        dev_t dev;
        ino_t ino;
        bool writable;             /* access mode of the stored fd: O_RDWR, or O_RDONLY */
        unsigned n_ref;            /* regions that use it, over all containers */
        uid_t uid;                 /* charged to: the owner of the container that stored it */
        char name[40];             /* its FDNAME: m<n>, or c<id>-mem-<region> from an older daemon */
};

typedef struct UidCharge {
        uid_t uid;
        unsigned n_fds;
} UidCharge;

struct StateStore {
        StoredFile **buckets;
        size_t n_buckets, n_files;
        StoredFile *pending;
        sd_event_source *linger;   /* fires state_flush_removals() once pending files lingered enough */
        uint64_t next_file;
        unsigned fdstore_max;      /* FileDescriptorStoreMax= of the unit; 0: unknown, not enforced */
        unsigned n_stored;         /* fds the daemon has in the store */
        UidCharge *charges;        /* who holds them */
        size_t n_charges;
        bool restoring;            /* no removals while containers are being rebuilt */
        struct StateLog *log;      /* NULL until the restore made it (state-log.h) */
        uint64_t generation;       /* of the log; the next one is generation + 1 */
        uint64_t live;             /* records a snapshot of the live state would take */
        bool log_failed;           /* logged once */
};

/* <state dir>/container-<id>.json */
char *state_file(Broker *b, uint64_t id);

bool strv_contains(char **l, const char *s);
int strv_push(char ***l, const char *s);

/* state-files.c: the table of memory files. */
StoredFile *state_file_find(StateStore *s, dev_t dev, ino_t ino, bool writable);
int state_file_insert(StateStore *s, StoredFile *f);
/* A region stopped using f: when none does, its removal from the store is due after the next commit. */
void state_file_unref(Broker *b, StoredFile *f);
void state_files_free(StateStore *s);
/* 1 for an O_RDWR fd, 0 for read-only, or -errno. */
int state_fd_writable(int fd);

/* Count of fds in the store, charged to uid. */
void state_charge(Broker *b, uid_t uid, int delta);
unsigned state_charged_to(StateStore *s, uid_t uid);

/* Restore: region (adopted from the stored fd `name`, which fd is) uses that stored file from now on. */
int state_file_adopt(Broker *b, Container *c, MemoryRegion *region, const char *name, int fd);
/* Whether a stored memory file goes by name (restore; scans the table). */
bool state_file_named(Broker *b, const char *name);
/* Regions of c are reported to the store from now on. */
void state_watch_memory(Container *c);
/* A fresh log generation with a snapshot of every container's state, in the store before the old
 * one leaves it. */
int state_log_rewrite(Broker *b);
/* state.c, for state-vfio-user.c: a record appended (committed with the request's end), the end of a
 * request, the fds named prefix<name> the store must hold (pushed now; *ret_drop the names to remove
 * after the commit), and their removal. */
void state_append(Broker *b, StateRecord *r);
void state_commit(Broker *b);
int state_sync_fds(Broker *b, uid_t uid, const char *prefix, const BackendFd *fds, size_t n_fds, char ***stored,
                   char ***ret_drop);
void state_remove_names(Broker *b, uid_t uid, char **names);
/* The container's backend fds the store must hold (pushed now; *ret_drop to remove after the commit),
 * and their removal. */
int state_push_backend_fds(Container *c, char ***ret_drop);
void state_remove_fds(Container *c, char **names);

/* state-vfio-user.c: the watch of the vfio-user face's sessions; a snapshot of c's sessions into l
 * (returns the records written, or < 0); and, at restore, the session of vs served again, whose fds
 * names has in the store from now on (those it no longer needs leave it). */
extern const VfioUserWatch state_vfio_user_watch;
int state_log_vfio_user_snapshot(StateLog *l, Container *c);
void state_vfio_user_adopt(Broker *b, VfioUserServer *vs, char **names);
/* Sends the removals that became due: files no saved state names any more. */
void state_flush_removals(Broker *b);
/* The same, STATE_LINGER_USEC from now: a VMM that unmaps the last range of a file and maps it again
 * (a Map+Unmap cycle, a virtio-mem granule discarded and populated) finds it still in the store and
 * costs the service manager no push and removal. Unpinned memory stays referenced by the store that
 * long, no longer. */
#define STATE_LINGER_USEC (250 * 1000)
void state_flush_removals_later(Broker *b);
