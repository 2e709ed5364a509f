/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include "container.h"
#include "container-dbus.h"
#include "group.h"
#include "log.h"
#include "message-ids.h"
#include "state.h"

#define STATE_VERSION 1

/* One socket to the service manager for the daemon's life: every Map of new memory and every Unmap
 * of the last mapping of a file stores or removes an fd, and sd_pid_notify_with_fds() would open and
 * set up a socket for each. */
static int notify_connect(Broker *b) {
        const char *e = getenv("NOTIFY_SOCKET");
        union {
                struct sockaddr sa;
                struct sockaddr_un un;
        } sa = { .un.sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;
        size_t len;

        if (!e || (e[0] != '/' && e[0] != '@') || (len = strlen(e)) >= sizeof(sa.un.sun_path))
                return -EINVAL;
        memcpy(sa.un.sun_path, e, len);
        if (e[0] == '@')
                sa.un.sun_path[0] = 0; /* abstract namespace */
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, &sa.sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len)) < 0)
                return -errno;
        b->notify_fd = TAKE_FD(fd);
        return 0;
}

int state_setup(Broker *b, const char *state_dir) {
        int r;

        /* Without a service manager nobody would keep the fds, and a state file alone cannot bring a
         * container back. */
        if (!getenv("NOTIFY_SOCKET") || !state_dir)
                return 0;
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return log_warning_errno(-errno, "Cannot create %s, restarts will not keep VMs: %m", state_dir);
        r = notify_connect(b);
        if (r < 0)
                return log_warning_errno(r, "Cannot connect to $NOTIFY_SOCKET, restarts will not keep VMs: %m");
        b->state_dir = strdup(state_dir);
        return b->state_dir ? 1 : -ENOMEM;
}

static int notify_send(Broker *b, const char *msg, int fd) {
        struct iovec iov = { .iov_base = (char *) msg, .iov_len = strlen(msg) };
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

        if (fd >= 0) {
                mh.msg_control = &control;
                mh.msg_controllen = sizeof(control);
                struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh);
                cmsg->cmsg_level = SOL_SOCKET;
                cmsg->cmsg_type = SCM_RIGHTS;
                cmsg->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        }
        return sendmsg(b->notify_fd, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

static int fdstore_push(Broker *b, const char *name, int fd, bool poll) {
        char msg[160];
        int r;

        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s%s", name, poll ? "" : "\nFDPOLL=0");
        r = notify_send(b, msg, fd);
        if (r < 0)
                log_debug_errno(r, "Cannot store fd %s: %m", name);
        return r;
}

static void fdstore_remove(Broker *b, const char *name) {
        char msg[160];

        snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
        (void) notify_send(b, msg, -EBADF);
}

static bool strv_contains(char **l, const char *s) {
        for (; l && *l; l++)
                if (strcmp(*l, s) == 0)
                        return true;
        return false;
}

static int strv_push(char ***l, const char *s) {
        size_t n = strv_length(*l);
        char **a = realloc(*l, (n + 2) * sizeof(char *));
        if (!a)
                return -ENOMEM;
        *l = a;
        a[n] = strdup(s);
        a[n + 1] = NULL;
        return a[n] ? 0 : -ENOMEM;
}

static char *state_file(Broker *b, uint64_t id) {
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

        r = c->broker->backend->ops->container_get_fds(c->backend, &fds, &n_fds);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_fds; i++) {
                snprintf(name, sizeof(name), "c%" PRIu64 "-%s", c->id, fds[i].name);
                (void) strv_push(&want, name);
                if (!strv_contains(c->stored_fds, name) && fdstore_push(c->broker, name, fds[i].fd, fds[i].poll) >= 0)
                        (void) strv_push(&c->stored_fds, name);
        }
        for (MemoryRegion *m = memory_pool_first(c->memory); m; m = memory_region_next(m)) {
                snprintf(name, sizeof(name), "c%" PRIu64 "-mem-%u", c->id, memory_region_id(m));
                (void) strv_push(&want, name);
                if (!strv_contains(c->stored_fds, name) && fdstore_push(c->broker, name, memory_region_fd(m), true) >= 0)
                        (void) strv_push(&c->stored_fds, name);
        }
        free(fds);

        /* Whatever is stored but no longer wanted leaves the store. */
        char **keep = NULL;
        for (char **s = c->stored_fds; s && *s; s++) {
                if (strv_contains(want, *s))
                        (void) strv_push(&keep, *s);
                else
                        fdstore_remove(c->broker, *s);
        }
        strv_free(c->stored_fds);
        c->stored_fds = keep;
        strv_free(want);
        return 0;
}

static json_object *json_u64(uint64_t v) {
        /* json-c integers are int64: larger values (IOVAs near 2^64) are written as strings. */
        if (v <= INT64_MAX)
                return json_object_new_int64((int64_t) v);
        char buf[32];
        snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
        return json_object_new_string(buf);
}

/* As json_u64(), written out. */
static void fput_u64(FILE *f, uint64_t v) {
        if (v <= INT64_MAX)
                fprintf(f, "%" PRIu64, v);
        else
                fprintf(f, "\"0x%" PRIx64 "\"", v);
}

static int parse_u64(json_object *o, uint64_t *ret) {
        if (json_object_is_type(o, json_type_int)) {
                int64_t v = json_object_get_int64(o);
                if (v < 0)
                        return -EINVAL;
                *ret = (uint64_t) v;
                return 0;
        }
        if (json_object_is_type(o, json_type_string)) {
                char *end;
                errno = 0;
                *ret = strtoull(json_object_get_string(o), &end, 0);
                return errno || *end ? -EINVAL : 0;
        }
        return -EINVAL;
}

/* One [iova, size, region, offset, flags, ...] entry of n numbers; region is 32-bit, flags READ|WRITE. */
static int parse_entry(json_object *a, uint64_t *f, size_t n, const char *what, BrokerError *e) {
        if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) != n)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed %s", what);
        for (size_t k = 0; k < n; k++)
                if (parse_u64(json_object_array_get_idx(a, k), &f[k]) < 0)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed %s", what);
        if (f[2] > UINT32_MAX || f[4] > 3)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed %s", what);
        return 0;
}

int state_save_container(Container *c) {
        Broker *b = c->broker;
        _cleanup_free_ char *path = NULL, *tmp = NULL;
        json_object *root, *groups, *regions;
        MappingTableNode *node;
        FILE *f;
        int r;

        if (!b->state_dir)
                return 0;

        r = state_sync_fds(c);
        if (r < 0)
                return log_warning_errno(r, "Container %" PRIu64 ": cannot store its fds: %m", c->id);

        root = json_object_new_object();
        json_object_object_add(root, "version", json_object_new_int(STATE_VERSION));
        json_object_object_add(root, "backend", json_object_new_string(backend_name(b->backend)));
        json_object_object_add(root, "id", json_u64(c->id));
        json_object_object_add(root, "owner", json_object_new_string(c->owner));
        json_object_object_add(root, "uid", json_object_new_int64(c->uid));
        json_object_object_add(root, "label", json_object_new_string(c->label));
        groups = json_object_new_array();
        for (size_t i = 0; i < c->n_groups; i++)
                json_object_array_add(groups, json_object_new_int64(c->groups[i]));
        json_object_object_add(root, "groups", groups);
        regions = json_object_new_array();
        for (MemoryRegion *m = memory_pool_first(c->memory); m; m = memory_region_next(m)) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "id", json_object_new_int64(memory_region_id(m)));
                json_object_object_add(o, "flags", json_object_new_int64(memory_region_flags(m)));
                json_object_array_add(regions, o);
        }
        json_object_object_add(root, "regions", regions);
        if (c->dirty_tracking)
                json_object_object_add(root, "dirty_tracking", json_object_new_boolean(true));
        if (mapping_table_size(&c->discardable) > 0) {
                /* [iova, size, region, offset, flags, granule]; their populated granules are mappings. */
                json_object *l = json_object_new_array();
                for (node = mapping_table_first(&c->discardable); node; node = mapping_table_next(node)) {
                        DiscardRegion *d = container_of(node, DiscardRegion, node);
                        json_object *a = json_object_new_array_ext(6);
                        json_object_array_add(a, json_u64(node->first));
                        json_object_array_add(a, json_u64(mapping_table_node_size(node)));
                        json_object_array_add(a, json_object_new_int64(memory_region_id(d->region)));
                        json_object_array_add(a, json_u64(d->offset));
                        json_object_array_add(a, json_object_new_int64(d->flags));
                        json_object_array_add(a, json_u64(d->granule));
                        json_object_array_add(l, a);
                }
                json_object_object_add(root, "discardable", l);
        }

        path = state_file(b, c->id);
        if (!path || asprintf(&tmp, "%s.tmp", path) < 0) {
                json_object_put(root);
                return -ENOMEM;
        }
        f = fopen(tmp, "we");
        if (!f) {
                json_object_put(root);
                return log_warning_errno(-errno, "Cannot write %s: %m", tmp);
        }
        /* The small part through json-c; the mappings, up to 65535 of them, straight to the file as
         * [iova, size, region, offset, flags]: building a json-c tree for them cost more time and memory
         * than everything else a Map does. */
        size_t len;
        const char *head = json_object_to_json_string_length(root, JSON_C_TO_STRING_PLAIN, &len);
        assert(len > 2 && head[len - 1] == '}');
        fwrite(head, 1, len - 1, f);
        fputs(",\"mappings\":[", f);
        for (node = mapping_table_first(&c->mappings); node; node = mapping_table_next(node)) {
                Mapping *m = container_of(node, Mapping, node);
                fputs(node == mapping_table_first(&c->mappings) ? "[" : ",[", f);
                fput_u64(f, node->first);
                fputc(',', f);
                fput_u64(f, mapping_table_node_size(node));
                fprintf(f, ",%u,", memory_region_id(m->region));
                fput_u64(f, m->offset);
                fprintf(f, ",%" PRIu32 "]", m->flags);
        }
        r = fputs("]}", f) < 0 || ferror(f) ? -EIO : 0;
        json_object_put(root);
        /* No fsync(): the state only has to survive the daemon's death, not the machine's (/run does
         * not survive a reboot, nor do the fds it describes), and the page cache outlives any process. */
        if (fflush(f) != 0)
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
                fdstore_remove(c->broker, *s);
        path = state_file(c->broker, c->id);
        if (path)
                (void) unlink(path);
}

typedef struct StoredFd {
        char *name;
        int fd;
} StoredFd;

static void stored_fds_close_unused(Broker *b, StoredFd *fds, size_t n, const char *why) {
        for (size_t i = 0; i < n; i++)
                if (fds[i].fd >= 0) {
                        log_warning("Closing fd %s from the fd store: %s.", fds[i].name, why);
                        fdstore_remove(b, fds[i].name);
                        fds[i].fd = safe_close(fds[i].fd);
                }
}


/* Rebuilds one container from its state and its fds (those named c<id>-*). */
static int state_restore_container(Broker *b, json_object *root, StoredFd *stored, size_t n_stored, uint64_t *ret_id,
                                   BrokerError *e) {
        json_object *v, *groups_o, *regions_o, *mappings_o;
        BackendFd *fds = NULL;
        size_t n_fds = 0;
        unsigned groups[64];
        size_t n_groups = 0;
        uint64_t id, uid;
        const char *owner, *label;
        char prefix[32];
        BackendContainer *bc = NULL;
        Container *c = NULL;
        int r;

        if (!json_object_object_get_ex(root, "version", &v) || json_object_get_int(v) != STATE_VERSION ||
            !json_object_object_get_ex(root, "backend", &v) ||
            strcmp(json_object_get_string(v), backend_name(b->backend)) != 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "state of another version or backend");
        if (!json_object_object_get_ex(root, "id", &v) || parse_u64(v, &id) < 0 || id == 0 ||
            !json_object_object_get_ex(root, "owner", &v) || !(owner = json_object_get_string(v)) ||
            !json_object_object_get_ex(root, "uid", &v) || parse_u64(v, &uid) < 0 ||
            !json_object_object_get_ex(root, "label", &v) || !(label = json_object_get_string(v)) ||
            !json_object_object_get_ex(root, "groups", &groups_o) || !json_object_is_type(groups_o, json_type_array) ||
            !json_object_object_get_ex(root, "regions", &regions_o) || !json_object_is_type(regions_o, json_type_array) ||
            !json_object_object_get_ex(root, "mappings", &mappings_o) ||
            !json_object_is_type(mappings_o, json_type_array) || json_object_array_length(groups_o) > 64)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed state");
        *ret_id = id;
        for (size_t i = 0; i < json_object_array_length(groups_o); i++) {
                uint64_t g;
                if (parse_u64(json_object_array_get_idx(groups_o, i), &g) < 0 || g > UINT32_MAX)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed group list");
                groups[n_groups++] = (unsigned) g;
        }

        /* The backend's fds: c<id>-<name>, except the memory ones. */
        snprintf(prefix, sizeof(prefix), "c%" PRIu64 "-", id);
        fds = calloc(n_stored + 1, sizeof(BackendFd));
        if (!fds)
                return -ENOMEM;
        for (size_t i = 0; i < n_stored; i++)
                if (stored[i].fd >= 0 && strncmp(stored[i].name, prefix, strlen(prefix)) == 0 &&
                    strncmp(stored[i].name + strlen(prefix), "mem-", 4) != 0) {
                        snprintf(fds[n_fds].name, sizeof(fds[n_fds].name), "%s", stored[i].name + strlen(prefix));
                        fds[n_fds++].fd = stored[i].fd;
                }
        r = b->backend->ops->container_restore(b->backend, fds, n_fds, groups, n_groups, &bc, e);
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

        r = container_new_restored(b, id, owner, (uid_t) uid, label, bc, groups, n_groups, &c, e);
        if (r < 0) {
                backend_container_free(bc);
                return r;
        }

        /* From here on, any failure tears the whole container down: nothing stays pinned for a
         * container nobody can reach. */
        for (size_t i = 0; i < json_object_array_length(regions_o) && r >= 0; i++) {
                json_object *o = json_object_array_get_idx(regions_o, i), *ri, *rf;
                uint64_t rid, flags;
                char name[96];
                ssize_t found = -1;

                if (!json_object_object_get_ex(o, "id", &ri) || parse_u64(ri, &rid) < 0 || rid > UINT32_MAX ||
                    !json_object_object_get_ex(o, "flags", &rf) || parse_u64(rf, &flags) < 0) {
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed memory region");
                        break;
                }
                snprintf(name, sizeof(name), "%smem-%" PRIu64, prefix, rid);
                for (size_t k = 0; k < n_stored; k++)
                        if (stored[k].fd >= 0 && strcmp(stored[k].name, name) == 0)
                                found = (ssize_t) k;
                if (found < 0) {
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "memory fd %s was not kept", name);
                        break;
                }
                r = memory_pool_adopt(c->memory, stored[found].fd, (unsigned) rid, (uint32_t) flags, e);
                if (r >= 0)
                        stored[found].fd = -EBADF;
        }
        /* Both lists hold [iova, size, region, offset, flags(, granule)]. */
        if (r >= 0 && json_object_object_get_ex(root, "discardable", &v)) {
                if (!json_object_is_type(v, json_type_array))
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed discardable regions");
                for (size_t i = 0; r >= 0 && i < json_object_array_length(v); i++) {
                        uint64_t f[6];
                        r = parse_entry(json_object_array_get_idx(v, i), f, 6, "discardable region", e);
                        if (r >= 0)
                                r = container_restore_discardable(c, (unsigned) f[2], f[3], f[1], f[0],
                                                                  (uint32_t) f[4], f[5], e);
                }
        }
        for (size_t i = 0; i < json_object_array_length(mappings_o) && r >= 0; i++) {
                uint64_t f[5];
                r = parse_entry(json_object_array_get_idx(mappings_o, i), f, 5, "mapping", e);
                if (r >= 0)
                        r = container_restore_mapping(c, (unsigned) f[2], f[3], f[1], f[0], (uint32_t) f[4], e);
        }
        memory_pool_prune(c->memory);

        /* The kernel kept tracking (the container fd stayed open); the sim starts it again. */
        if (r >= 0 && json_object_object_get_ex(root, "dirty_tracking", &v) && json_object_get_boolean(v))
                r = container_set_dirty_tracking(c, true, e);

        /* What the store holds for this container now belongs to it: container_free() removes it. */
        for (size_t i = 0; i < n_stored; i++)
                if (strncmp(stored[i].name, prefix, strlen(prefix)) == 0 && stored[i].fd < 0)
                        (void) strv_push(&c->stored_fds, stored[i].name);

        if (r < 0) {
                container_dbus_close(c);
                return r;
        }

        /* The owner may have gone while we were away. */
        if (!broker_name_has_owner(b, c->owner)) {
                log_info("Owner %s of restored container %s is gone; closing it.", c->owner, c->path);
                container_dbus_close(c);
                return 0;
        }
        r = container_dbus_track(c, c->owner);
        if (r < 0) {
                container_dbus_close(c);
                return r;
        }
        (void) state_save_container(c);
        log_info("Restored container %s (%s, owner %s): %zu groups, %zu mappings.", c->path, c->label, c->owner,
                 c->n_groups, container_n_mappings(c));
        return 1;
}

int state_restore_text(Broker *b, const char *text, BrokerError *e) {
        json_object *root = json_tokener_parse(text);
        uint64_t id = 0;
        int r;

        if (!root)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "not JSON");
        r = state_restore_container(b, root, NULL, 0, &id, e);
        json_object_put(root);
        return r;
}

int state_restore(Broker *b) {
        _cleanup_strv_free_ char **names = NULL;
        StoredFd *stored = NULL;
        size_t n_stored = 0, restored = 0;
        DIR *d;
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
        for (int i = 0; i < n; i++) {
                stored[i].fd = SD_LISTEN_FDS_START + i;
                stored[i].name = names && names[i] ? names[i] : (char *) "unknown";
                (void) fcntl(stored[i].fd, F_SETFD, FD_CLOEXEC);
        }
        n_stored = (size_t) n;

        d = opendir(b->state_dir);
        while (d && (de = readdir(d))) {
                _cleanup_free_ char *path = NULL;
                BrokerError e = BROKER_ERROR_INIT;
                json_object *root;
                int r;

                if (strncmp(de->d_name, "container-", 10) != 0 || !strstr(de->d_name, ".json") ||
                    strstr(de->d_name, ".tmp"))
                        continue;
                if (asprintf(&path, "%s/%s", b->state_dir, de->d_name) < 0)
                        break;
                root = json_object_from_file(path);
                if (!root) {
                        log_error("Corrupt state file %s, its container cannot be restored and is torn down.", path);
                        (void) unlink(path);
                        continue;
                }
                uint64_t id = 0;
                r = state_restore_container(b, root, stored, n_stored, &id, &e);
                json_object_put(root);
                if (r < 0) {
                        log_error("Cannot restore %s: %s; its container is torn down.", path,
                                  broker_error_is_set(&e) ? e.message : strerror(-r));
                        (void) unlink(path);
                } else if (r > 0)
                        restored++;
                if (r <= 0 && id > 0) {
                        /* Gone for good: none of its fds may stay in the store. */
                        char prefix[32];
                        snprintf(prefix, sizeof(prefix), "c%" PRIu64 "-", id);
                        for (size_t i = 0; i < n_stored; i++)
                                if (strncmp(stored[i].name, prefix, strlen(prefix)) == 0) {
                                        fdstore_remove(b, stored[i].name);
                                        stored[i].fd = safe_close(stored[i].fd);
                                }
                }
        }
        if (d)
                closedir(d);

        /* Fds without state: nobody can reach what they hold. Closing them releases it. */
        stored_fds_close_unused(b, stored, n_stored, "no restorable state refers to it");
        free(stored);
        if (n > 0 || restored > 0)
                log_event(&(LogEvent) { LOG_MESSAGE_RESTORE_DONE, .count = &(uint64_t) { restored } }, "Restart: %zu containers restored from %d stored fds.", restored, n);
        return 0;
}

bool state_hand_over(Broker *b) {
        if (!b->state_dir || !b->containers)
                return false;

        for (Container *c = b->containers; c; c = c->next) {
                for (MappingTableNode *node = mapping_table_first(&c->mappings); node; node = mapping_table_next(node))
                        (void) c->broker->backend->ops->container_invalidate_vaddr(c->backend, node->first,
                                                                                   mapping_table_node_size(node));
                (void) state_save_container(c);
        }
        b->handing_over = true;
        log_info("Leaving %zu containers to the next instance.", b->n_containers);
        return true;
}
