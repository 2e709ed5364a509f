/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Restart: the containers a previous instance left behind, rebuilt from their state and the fds the
 * service manager kept; and the orderly exit that leaves every container to the next instance. */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include "bus.h"
#include "container.h"
#include "container-dbus.h"
#include "fdstore.h"
#include "log.h"
#include "message-ids.h"
#include "owner-watch.h"
#include "state.h"
#include "state-encode.h"
#include "state-log.h"
#include "state-private.h"
#include "vfio-user-server.h"

typedef struct StoredFd {
        char *name;
        int fd;
} StoredFd;

static void stored_fds_close_unused(Broker *b, StoredFd *fds, size_t n, const char *why) {
        for (size_t i = 0; i < n; i++)
                if (fds[i].fd >= 0) {
                        log_warning("Closing fd %s from the fd store: %s.", fds[i].name, why);
                        fdstore_remove(b->notify_fd, fds[i].name);
                        fds[i].fd = safe_close(fds[i].fd);
                }
}


/* One session of c, from the fds named v<container>-<server>-*: the listener, the session page, the
 * client's socket and the device's fds (dev-*). What it takes stays in the store under its name; what
 * it leaves is closed and removed at the end of the restore (or now, when the session fails). */
static void restore_vfio_user(Broker *b, Container *c, const StateVfioUser *v, StoredFd *stored, size_t n_stored) {
        _cleanup_free_ BackendFd *dev = NULL;
        _cleanup_free_ size_t *dev_index = NULL;
        _cleanup_strv_free_ char **taken = NULL;
        VfioUserRestoreFds fds = { .listen = -EBADF, .session = -EBADF, .client = -EBADF };
        ssize_t listen_index = -1, session_index = -1, client_index = -1;
        BrokerError e = BROKER_ERROR_INIT;
        char prefix[64], client[32];
        size_t n_dev = 0;
        int r;

        snprintf(prefix, sizeof(prefix), "v%" PRIu64 "-%" PRIu32 "-", c->id, v->info.id);
        snprintf(client, sizeof(client), "client-%" PRIu32, v->info.client_serial);
        dev = calloc(n_stored + 1, sizeof(BackendFd));
        dev_index = calloc(n_stored + 1, sizeof(size_t));
        if (!dev || !dev_index)
                return (void) log_oom();
        for (size_t i = 0; i < n_stored; i++) {
                const char *rest = stored[i].name + strlen(prefix);

                if (stored[i].fd < 0 || strncmp(stored[i].name, prefix, strlen(prefix)) != 0)
                        continue;
                if (strcmp(rest, "listen") == 0)
                        listen_index = (ssize_t) i;
                else if (strcmp(rest, "session") == 0)
                        session_index = (ssize_t) i;
                else if (v->info.has_client && strcmp(rest, client) == 0)
                        client_index = (ssize_t) i;
                else if (strncmp(rest, "dev-", 4) == 0) {
                        snprintf(dev[n_dev].name, sizeof(dev[n_dev].name), "%s", rest + 4);
                        dev[n_dev].fd = stored[i].fd;
                        dev_index[n_dev++] = i;
                }
        }
        fds.listen = listen_index >= 0 ? stored[listen_index].fd : -EBADF;
        fds.session = session_index >= 0 ? stored[session_index].fd : -EBADF;
        fds.client = client_index >= 0 ? stored[client_index].fd : -EBADF;
        fds.device = dev;
        fds.n_device = n_dev;

        r = vfio_user_server_restore(c, &v->info, v->dma, v->n_dma, &fds, &e);

        /* What the session took (and closes itself) is no longer the table's to close. */
        if (listen_index >= 0 && fds.listen < 0)
                stored[listen_index].fd = -EBADF;
        if (session_index >= 0 && fds.session < 0)
                stored[session_index].fd = -EBADF;
        if (client_index >= 0 && fds.client < 0)
                stored[client_index].fd = -EBADF;
        for (size_t k = 0; k < n_dev; k++)
                if (dev[k].fd < 0)
                        stored[dev_index[k]].fd = -EBADF;

        for (size_t i = 0; i < n_stored; i++) {
                if (strncmp(stored[i].name, prefix, strlen(prefix)) != 0)
                        continue;
                if (r < 0) {
                        /* The session is gone for good: none of its fds may stay in the store. */
                        fdstore_remove(b->notify_fd, stored[i].name);
                        stored[i].fd = safe_close(stored[i].fd);
                } else if (stored[i].fd < 0 && strv_push(&taken, stored[i].name) < 0)
                        return (void) log_oom();
        }
        if (r < 0) {
                log_error("Container %s: cannot serve %s over vfio-user again: %s; its client's mappings are "
                          "dropped.", c->path, v->info.device, broker_error_is_set(&e) ? e.message : strerror(-r));
                return;
        }
        VfioUserServer *vs = vfio_user_server_find(c, v->info.device);
        if (vs && b->state)
                state_vfio_user_adopt(b, vs, taken);
}

/* Rebuilds one container from its state and its fds (those named c<id>-*). */

static int state_restore_container(Broker *b, const ContainerState *st, StoredFd *stored, size_t n_stored,
                                   BrokerError *e) {
        BackendFd *fds = NULL;
        size_t n_fds = 0;
        char prefix[32];
        BackendContainer *bc = NULL;
        Container *c = NULL;
        int r;

        if (strcmp(st->backend, backend_name(b->backend)) != 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "state of another backend (%s)", st->backend);

        /* The backend's fds: c<id>-<name>, except the memory ones. */
        snprintf(prefix, sizeof(prefix), "c%" PRIu64 "-", st->id);
        fds = calloc(n_stored + 1, sizeof(BackendFd));
        if (!fds)
                return -ENOMEM;
        for (size_t i = 0; i < n_stored; i++)
                if (stored[i].fd >= 0 && strncmp(stored[i].name, prefix, strlen(prefix)) == 0 &&
                    strncmp(stored[i].name + strlen(prefix), "mem-", 4) != 0) {
                        snprintf(fds[n_fds].name, sizeof(fds[n_fds].name), "%s", stored[i].name + strlen(prefix));
                        fds[n_fds++].fd = stored[i].fd;
                }
        r = backend_container_restore(b->backend, fds, n_fds, st->groups, st->n_groups, &bc, e);
        /* The backend took what it uses (fd = -1); mark those used in our table. */
        for (size_t i = 0, k = 0; i < n_stored && k < n_fds; i++)
                if (stored[i].fd >= 0 && strncmp(stored[i].name, prefix, strlen(prefix)) == 0 &&
                    strncmp(stored[i].name + strlen(prefix), "mem-", 4) != 0) {
                        if (fds[k].fd < 0)
                                stored[i].fd = -EBADF;
                        k++;
                }
        free(fds);
        if (r < 0)
                return r;

        r = container_new_restored(b, st->id, st->owner, st->uid, st->label, bc, st->groups, st->n_groups, &c, e);
        if (r < 0) {
                backend_container_free(bc);
                return r;
        }

        /* From here on, any failure tears the whole container down: nothing stays pinned for a
         * container nobody can reach. Its regions are reported to the store as they go. */
        if (b->state)
                state_watch_memory(c);
        for (size_t i = 0; i < st->n_regions && r >= 0; i++) {
                char name[96];
                ssize_t found = -1;
                int fd;

                /* Memory is stored per open file (m<n>, named in the state); older daemons stored it
                 * per region (c<id>-mem-<region>). Several regions may share one file. */
                if (st->regions[i].file[0])
                        snprintf(name, sizeof(name), "%s", st->regions[i].file);
                else
                        snprintf(name, sizeof(name), "%smem-%" PRIu32, prefix, st->regions[i].id);
                for (size_t k = 0; k < n_stored; k++)
                        if (stored[k].fd >= 0 && strcmp(stored[k].name, name) == 0)
                                found = (ssize_t) k;
                if (found < 0) {
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "memory fd %s was not kept", name);
                        break;
                }
                fd = fcntl(stored[found].fd, F_DUPFD_CLOEXEC, 3);
                if (fd < 0) {
                        r = broker_error_set_errno(e, -errno, "Cannot duplicate memory fd %s", name);
                        break;
                }
                r = memory_pool_adopt(c->memory, fd, st->regions[i].id, st->regions[i].flags, e);
                if (r < 0) {
                        safe_close(fd);
                        break;
                }
                if (b->state) {
                        r = state_file_adopt(b, c, memory_pool_find_id(c->memory, st->regions[i].id), name,
                                             stored[found].fd);
                        if (r < 0)
                                broker_error_set_errno(e, r, "Cannot take memory fd %s back", name);
                }
        }
        for (size_t i = 0; i < st->n_discardable && r >= 0; i++) {
                const StateMapping *d = &st->discardable[i];
                r = container_restore_discardable(c, d->region, d->offset, d->size, d->iova, d->flags, d->granule, e);
        }
        for (size_t i = 0; i < st->n_mappings && r >= 0; i++) {
                const StateMapping *m = &st->mappings[i];
                r = container_restore_mapping(c, m->region, m->offset, m->size, m->iova, m->flags, e);
        }
        memory_pool_prune(c->memory);

        /* The kernel kept tracking (the container fd stayed open); the sim starts it again. */
        if (r >= 0 && st->dirty_tracking)
                r = container_set_dirty_tracking(c, true, e);

        /* The backend fds the store holds for this container now belong to it: closing it removes
         * them. (Memory fds stay open in the table until the end of the restore.) */
        for (size_t i = 0; i < n_stored; i++)
                if (strncmp(stored[i].name, prefix, strlen(prefix)) == 0 && stored[i].fd < 0 &&
                    strv_push(&c->stored_fds, stored[i].name) >= 0 && b->state)
                        state_charge(b, c->uid, +1);

        if (r < 0) {
                container_close(c);
                return r;
        }

        /* The owner may have gone while we were away. */
        if (!bus_name_has_owner(b, c->owner)) {
                log_info("Owner %s of restored container %s is gone; closing it.", c->owner, c->path);
                container_close(c);
                return 0;
        }
        r = owner_watch_track(c, c->owner);
        if (r < 0) {
                container_close(c);
                return r;
        }
        /* Whole again: the watchers hear of it (and the state store saves it). */
        container_restore_done(c);
        /* Then the devices it served over vfio-user, which drop their client's mappings if they
         * cannot take the client back. */
        for (size_t i = 0; i < st->n_vfio_user; i++)
                restore_vfio_user(b, c, &st->vfio_user[i], stored, n_stored);
        log_info("Restored container %s (%s, owner %s): %zu groups, %zu mappings.", c->path, c->label, c->owner,
                 c->n_groups, container_n_mappings(c));
        return 1;
}

int state_restore_text(Broker *b, const char *text, BrokerError *e) {
        _cleanup_(container_state_done) ContainerState st = {};
        int r;

        r = state_decode(text, &st, e);
        if (r < 0)
                return r;
        return state_restore_container(b, &st, NULL, 0, e);
}

int state_restore_log(Broker *b, const void *data, size_t size, BrokerError *e) {
        ContainerState *states = NULL;
        size_t n = 0;
        int r;

        r = state_log_replay(data, size, &states, &n, e);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                BrokerError inner = BROKER_ERROR_INIT;
                (void) state_restore_container(b, &states[i], NULL, 0, &inner);
        }
        container_states_free(states, n);
        return 0;
}

static int read_full_file(const char *path, char **ret) {
        _cleanup_fclose_ FILE *f = NULL;
        char *text = NULL;
        size_t size = 0;

        f = fopen(path, "re");
        if (!f)
                return -errno;
        /* getdelim() with NUL: the whole file, as long as it is. */
        if (getdelim(&text, &size, 0, f) < 0) {
                free(text);
                return feof(f) ? -ENODATA : -errno;
        }
        *ret = text;
        return 0;
}

/* Restores one container; what is gone for good leaves the store. */
static int restore_one(Broker *b, const ContainerState *st, StoredFd *stored, size_t n_stored, const char *where) {
        BrokerError e = BROKER_ERROR_INIT;
        uint64_t id = st->id;
        int r;

        r = state_restore_container(b, st, stored, n_stored, &e);
        if (r < 0)
                log_error("Cannot restore container %" PRIu64 " from %s: %s; it is torn down.", id, where,
                          broker_error_is_set(&e) ? e.message : strerror(-r));
        if (r <= 0 && id > 0) {
                /* Gone for good: none of its fds may stay in the store. */
                char prefix[32];
                snprintf(prefix, sizeof(prefix), "c%" PRIu64 "-", id);
                for (size_t i = 0; i < n_stored; i++)
                        if (strncmp(stored[i].name, prefix, strlen(prefix)) == 0 && stored[i].fd >= 0 &&
                            !state_file_named(b, stored[i].name)) {
                                fdstore_remove(b->notify_fd, stored[i].name);
                                stored[i].fd = safe_close(stored[i].fd);
                        }
        }
        return r;
}

int state_restore(Broker *b) {
        _cleanup_strv_free_ char **names = NULL;
        StoredFd *stored = NULL;
        size_t n_stored = 0, restored = 0;
        _cleanup_closedir_ DIR *d = NULL;
        struct dirent *de;
        int n;

        if (!b->state_dir)
                return 0;

        n = sd_listen_fds_with_names(true, &names);
        if (n < 0)
                return log_error_errno(n, "Cannot take the stored fds back: %m");
        stored = calloc(n > 0 ? n : 1, sizeof(StoredFd));
        if (!stored)
                return -ENOMEM;
        /* Nothing leaves the store before every container had its chance to claim it: memory files are
         * shared between containers. */
        b->state->restoring = true;
        for (int i = 0; i < n; i++) {
                stored[i].fd = SD_LISTEN_FDS_START + i;
                stored[i].name = names && names[i] ? names[i] : (char *) "unknown";
                (void) fcntl(stored[i].fd, F_SETFD, FD_CLOEXEC);
        }
        n_stored = (size_t) n;

        /* The state log: the newest complete generation (an older one is left when the daemon died
         * between storing a new generation and removing the old). */
        ssize_t log_index = -1;
        uint64_t log_generation = 0;
        for (size_t i = 0; i < n_stored; i++) {
                struct stat st;
                uint64_t g;
                void *p;

                if (strncmp(stored[i].name, "state-", 6) != 0)
                        continue;
                state_charge(b, 0, +1); /* in the store until the new generation replaced it */
                if (fstat(stored[i].fd, &st) < 0 || st.st_size < STATE_LOG_HEADER_SIZE)
                        continue;
                p = mmap(NULL, STATE_LOG_HEADER_SIZE, PROT_READ, MAP_SHARED, stored[i].fd, 0);
                if (p == MAP_FAILED)
                        continue;
                if (state_log_read_generation(p, STATE_LOG_HEADER_SIZE, &g) >= 0 && (log_index < 0 || g > log_generation)) {
                        log_index = (ssize_t) i;
                        log_generation = g;
                }
                munmap(p, STATE_LOG_HEADER_SIZE);
        }
        if (log_index >= 0) {
                struct stat st;
                void *p = MAP_FAILED;
                ContainerState *states = NULL;
                size_t n_states = 0;
                BrokerError e = BROKER_ERROR_INIT;
                int r;

                b->state->generation = log_generation;
                r = fstat(stored[log_index].fd, &st) < 0 ? -errno : 0;
                if (r >= 0) {
                        p = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED, stored[log_index].fd, 0);
                        r = p == MAP_FAILED ? -errno : 0;
                }
                if (r >= 0)
                        r = state_log_replay(p, (size_t) st.st_size, &states, &n_states, &e);
                if (p != MAP_FAILED)
                        munmap(p, (size_t) st.st_size);
                if (r < 0)
                        log_error("The state log %s is damaged (%s); every container is torn down.",
                                  stored[log_index].name, broker_error_is_set(&e) ? e.message : strerror(-r));
                for (size_t k = 0; k < n_states; k++)
                        if (restore_one(b, &states[k], stored, n_stored, stored[log_index].name) > 0)
                                restored++;
                container_states_free(states, n_states);
        }

        /* State files of daemons before the log, read once: the log written below replaces them. */
        d = opendir(b->state_dir);
        while (d && (de = readdir(d))) {
                _cleanup_free_ char *path = NULL, *text = NULL;
                _cleanup_(container_state_done) ContainerState st = {};
                BrokerError e = BROKER_ERROR_INIT;
                int r;

                if (strncmp(de->d_name, "container-", 10) != 0 || !strstr(de->d_name, ".json") ||
                    strstr(de->d_name, ".tmp"))
                        continue;
                if (asprintf(&path, "%s/%s", b->state_dir, de->d_name) < 0)
                        break;
                r = read_full_file(path, &text);
                if (r >= 0)
                        r = state_decode(text, &st, &e);
                if (r < 0) {
                        log_error("Corrupt state file %s (%s), its container cannot be restored and is torn down.",
                                  path, broker_error_is_set(&e) ? e.message : strerror(-r));
                        (void) unlink(path);
                        continue;
                }
                if (restore_one(b, &st, stored, n_stored, path) > 0)
                        restored++;
                (void) unlink(path);
        }

        /* The log of this instance: a snapshot of what was restored, in the store before the old
         * generations leave it. */
        int rl = state_log_rewrite(b);
        /* Names of new memory files are unique across instances too (the generation is), so a removal
         * of an earlier instance that arrives late can never hit a file of this one. */
        if (b->state->next_file < b->state->generation << 32)
                b->state->next_file = b->state->generation << 32;
        for (size_t i = 0; i < n_stored; i++)
                if (stored[i].fd >= 0 && strncmp(stored[i].name, "state-", 6) == 0) {
                        if (rl >= 0) {
                                fdstore_remove(b->notify_fd, stored[i].name);
                                state_charge(b, 0, -1);
                        }
                        stored[i].fd = safe_close(stored[i].fd);
                }

        /* Memory files stay in the store for the regions that use them; the daemon keeps its own
         * duplicates. Those no container took back go with the next flush. */
        for (size_t i = 0; i < n_stored; i++)
                if (stored[i].fd >= 0 && state_file_named(b, stored[i].name))
                        stored[i].fd = safe_close(stored[i].fd);
        /* Fds without state: nobody can reach what they hold. Closing them releases it. */
        stored_fds_close_unused(b, stored, n_stored, "no restorable state refers to it");
        free(stored);
        b->state->restoring = false;
        state_flush_removals(b);
        if (n > 0 || restored > 0)
                log_event(&(LogEvent) { LOG_MESSAGE_RESTORE_DONE, .count = &(uint64_t) { restored } },
                          "Restart: %zu containers restored from %d stored fds.", restored, n);
        return 0;
}

bool state_hand_over(Broker *b) {
        if (!b->state_dir || !b->containers)
                return false;

        /* vfio-user clients go over at a message boundary only: one caught inside a message is
         * disconnected first (and its mappings dropped), with the state saved as for any disconnect. */
        vfio_user_prepare_hand_over(b);
        for (Container *c = b->containers; c; c = c->next) {

                container_forget_vaddrs(c);
                (void) state_save_container(c, false);
        }
        state_flush_removals(b);
        b->handing_over = true;
        log_info("Leaving %zu containers to the next instance.", b->n_containers);
        return true;
}
