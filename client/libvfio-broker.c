/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "broker-wire.h"
#include "macro.h"
#include "vfio-broker/vfio-broker.h"

#define BUS_NAME BROKER_BUS_NAME
#define ROOT_PATH BROKER_OBJECT_PATH
#define CONTAINER_PREFIX ROOT_PATH "/container/"
#define MANAGER_IFACE BUS_NAME ".Manager"
#define GROUP_IFACE BUS_NAME ".Group"
#define CONTAINER_IFACE BUS_NAME ".Container"


struct vfio_broker {
        unsigned n_ref;
        sd_bus *bus;          /* the system bus: signals, and calls when there is no peer connection */
        sd_bus *peer;         /* Manager.OpenConnection: calls without the bus daemon's round trip */
        bool owns_bus;
        char error_name[128];
        char error_message[512];
        sd_bus_slot *balloon_slot;
        vfio_broker_balloon_handler balloon_handler;
        void *balloon_userdata;
};

struct vfio_broker_container {
        vfio_broker *broker;
        char *path;
        sd_bus_slot *balloon_slot;
        vfio_broker_container_balloon_handler balloon_handler;
        void *balloon_userdata;
};

static void set_error(vfio_broker *b, const char *name, const char *message) {
        snprintf(b->error_name, sizeof(b->error_name), "%s", name ?: "");
        snprintf(b->error_message, sizeof(b->error_message), "%s", message ?: "");
}

static int fail_errno(vfio_broker *b, int r, const char *what) {
        char message[256];
        snprintf(message, sizeof(message), "%s: %s", what, strerror(-r));
        set_error(b, "", message);
        return r;
}

/* One errno per broker error, the table the daemon uses too (daemon/error.c). */
static int error_to_errno(const sd_bus_error *e, int r) {
        BrokerErrorCode code = broker_error_code_from_dbus_name(e->name);
        if (code != BROKER_ERROR_NONE)
                return -broker_error_code_to_errno(code);
        return r < 0 ? r : -EIO;
}

/* A peer-to-peer connection to the broker, used for every call when the broker offers one. Its
 * identity is ours on the bus, so ownership and authorization are unchanged. VFIO_BROKER_PEER=0
 * turns it off. */
static void open_peer(vfio_broker *b) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *env = getenv("VFIO_BROKER_PEER");
        sd_bus *peer = NULL;
        int fd, r;

        if (env && strcmp(env, "0") == 0)
                return;
        r = sd_bus_call_method(b->bus, BUS_NAME, ROOT_PATH, MANAGER_IFACE, "OpenConnection", NULL, &reply, "");
        if (r < 0 || sd_bus_message_read(reply, "h", &fd) < 0)
                return; /* an older broker: the bus it is */
        fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return;
        if (sd_bus_new(&peer) < 0 || sd_bus_set_fd(peer, fd, fd) < 0) {
                close(fd);
                sd_bus_unref(peer);
                return;
        }
        /* The socketpair carries the broker's credentials, so there is nothing to prove: ANONYMOUS. */
        if (sd_bus_set_anonymous(peer, true) < 0 || sd_bus_negotiate_fds(peer, true) < 0 || sd_bus_start(peer) < 0) {
                sd_bus_flush_close_unref(peer);
                return;
        }
        b->peer = peer;
}

/* The broker restarted (or its peer end went away): the peer connection is dead, the bus is not. */
static bool connection_lost(int r) {
        return r == -ENOTCONN || r == -ECONNRESET || r == -EPIPE || r == -ESHUTDOWN;
}

static int call(vfio_broker *b, const char *path, const char *iface, const char *member, sd_bus_message **reply,
                const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        set_error(b, NULL, NULL);
        for (int attempt = 0;; attempt++) {
                sd_bus *target = b->peer ?: b->bus;

                m = sd_bus_message_unref(m);
                /* No destination on a peer connection: there is no bus in between. */
                r = sd_bus_message_new_method_call(target, &m, b->peer ? NULL : BUS_NAME, path, iface, member);
                if (r < 0)
                        return fail_errno(b, r, "Cannot create a method call");
                /* Let polkit ask the user, as a VMM started from a session would expect. */
                (void) sd_bus_message_set_allow_interactive_authorization(m, true);
                if (types && *types) {
                        va_start(ap, types);
                        r = sd_bus_message_appendv(m, types, ap);
                        va_end(ap);
                        if (r < 0)
                                return fail_errno(b, r, "Cannot build the method call");
                }
                r = sd_bus_call(target, m, 0, &error, reply);
                if (r >= 0 || !b->peer || !connection_lost(r) || attempt > 0)
                        break;
                /* The broker restarted: continue on the bus, and on a new peer connection next time. */
                sd_bus_error_free(&error);
                b->peer = sd_bus_flush_close_unref(b->peer);
                open_peer(b);
        }
        if (r < 0) {
                set_error(b, error.name, error.message ?: strerror(-r));
                r = error_to_errno(&error, r);
                sd_bus_error_free(&error);
                return r;
        }
        return 0;
}

static vfio_broker *broker_new(sd_bus *bus) {
        vfio_broker *b = calloc(1, sizeof(*b));
        if (!b)
                return NULL;
        b->n_ref = 1;
        b->bus = sd_bus_ref(bus);
        return b;
}

_public_ int vfio_broker_open(vfio_broker **ret) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        r = sd_bus_open_system(&bus);
        if (r < 0)
                return r;
        *ret = broker_new(bus);
        if (!*ret)
                return -ENOMEM;
        (*ret)->owns_bus = true;
        open_peer(*ret);
        return 0;
}

_public_ int vfio_broker_open_with_bus(sd_bus *bus, vfio_broker **ret) {
        if (!bus || !ret)
                return -EINVAL;
        *ret = broker_new(bus);
        if (!*ret)
                return -ENOMEM;
        open_peer(*ret);
        return 0;
}

_public_ vfio_broker *vfio_broker_ref(vfio_broker *b) {
        if (b)
                b->n_ref++;
        return b;
}

static vfio_broker *broker_ref(vfio_broker *b) {
        return vfio_broker_ref(b);
}

_public_ vfio_broker *vfio_broker_unref(vfio_broker *b) {
        if (!b || --b->n_ref > 0)
                return NULL;
        sd_bus_slot_unref(b->balloon_slot);
        sd_bus_flush_close_unref(b->peer);
        if (b->owns_bus)
                sd_bus_flush_close_unref(b->bus);
        else
                sd_bus_unref(b->bus);
        free(b);
        return NULL;
}

_public_ const char *vfio_broker_error_name(const vfio_broker *b) {
        return b ? b->error_name : "";
}

_public_ const char *vfio_broker_error_message(const vfio_broker *b) {
        return b ? b->error_message : "";
}

_public_ int vfio_broker_attach_event(vfio_broker *b, sd_event *event, int priority) {
        if (!b)
                return -EINVAL;
        return sd_bus_attach_event(b->bus, event, priority);
}

_public_ int vfio_broker_get_fd(vfio_broker *b) {
        return b ? sd_bus_get_fd(b->bus) : -EINVAL;
}

_public_ int vfio_broker_get_events(vfio_broker *b) {
        return b ? sd_bus_get_events(b->bus) : -EINVAL;
}

_public_ int vfio_broker_get_timeout(vfio_broker *b, uint64_t *usec) {
        return b ? sd_bus_get_timeout(b->bus, usec) : -EINVAL;
}

_public_ int vfio_broker_process(vfio_broker *b) {
        return b ? sd_bus_process(b->bus, NULL) : -EINVAL;
}

_public_ sd_bus *vfio_broker_get_bus(vfio_broker *b) {
        return b ? b->bus : NULL;
}

_public_ int vfio_broker_get_status(vfio_broker *b, vfio_broker_status *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        vfio_broker_status s = {};
        const char *name;
        int r;

        if (!b || !ret)
                return -EINVAL;
        r = call(b, ROOT_PATH, "org.freedesktop.DBus.Properties", "GetAll", &reply, "s", MANAGER_IFACE);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *str;
                int bv;

                r = sd_bus_message_read(reply, "s", &name);
                if (r < 0)
                        break;
                if (strcmp(name, "Version") == 0 || strcmp(name, "Backend") == 0) {
                        r = sd_bus_message_read(reply, "v", "s", &str);
                        if (r >= 0) {
                                char **field = name[0] == 'V' ? &s.version : &s.backend;
                                free(*field);
                                *field = strdup(str);
                        }
                } else if (strcmp(name, "BalloonInhibited") == 0) {
                        r = sd_bus_message_read(reply, "v", "b", &bv);
                        s.balloon_inhibited = bv;
                } else if (strcmp(name, "BalloonInhibitors") == 0)
                        r = sd_bus_message_read(reply, "v", "u", &s.balloon_inhibitors);
                else
                        r = sd_bus_message_skip(reply, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        if (r < 0 || !s.version || !s.backend) {
                vfio_broker_status_clear(&s);
                return fail_errno(b, r < 0 ? r : -EBADMSG, "Malformed Manager properties");
        }
        *ret = s;
        return 0;
}

_public_ void vfio_broker_status_clear(vfio_broker_status *s) {
        if (!s)
                return;
        free(s->version);
        free(s->backend);
        *s = (vfio_broker_status) {};
}

static int on_manager_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        vfio_broker *b = userdata;
        vfio_broker_status s = {};
        const char *iface;

        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, MANAGER_IFACE) != 0)
                return 0;
        /* Read both values as they are now: a signal may carry only one of them. */
        broker_ref(b);
        if (vfio_broker_get_status(b, &s) >= 0 && b->balloon_handler)
                b->balloon_handler(b, s.balloon_inhibited, s.balloon_inhibitors, b->balloon_userdata);
        vfio_broker_status_clear(&s);
        vfio_broker_unref(b);
        return 0;
}

_public_ int vfio_broker_watch_balloon(vfio_broker *b, vfio_broker_balloon_handler handler, void *userdata) {
        int r;

        if (!b)
                return -EINVAL;
        b->balloon_slot = sd_bus_slot_unref(b->balloon_slot);
        b->balloon_handler = handler;
        b->balloon_userdata = userdata;
        if (!handler)
                return 0;
        r = sd_bus_match_signal(b->bus, &b->balloon_slot, BUS_NAME, ROOT_PATH, "org.freedesktop.DBus.Properties",
                                "PropertiesChanged", on_manager_changed, b);
        return r < 0 ? fail_errno(b, r, "Cannot subscribe to PropertiesChanged") : 0;
}

static int read_strv(sd_bus_message *m, char ***ret) {
        return sd_bus_message_read_strv(m, ret);
}

/* Reads one a{sv} of the Group interface. */
static int parse_group(sd_bus_message *m, vfio_broker_group *g) {
        const char *name;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;
                if (strcmp(name, "Id") == 0)
                        r = sd_bus_message_read(m, "v", "u", &g->id);
                else if (strcmp(name, "Viable") == 0) {
                        int v;
                        r = sd_bus_message_read(m, "v", "b", &v);
                        g->viable = v;
                } else if (strcmp(name, "Container") == 0) {
                        const char *o;
                        r = sd_bus_message_read(m, "v", "o", &o);
                        if (r >= 0 && strcmp(o, "/") != 0 && !(g->container = strdup(o)))
                                r = -ENOMEM;
                } else if (strcmp(name, "Devices") == 0) {
                        r = sd_bus_message_enter_container(m, 'v', "as");
                        if (r >= 0)
                                r = read_strv(m, &g->devices);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else
                        r = sd_bus_message_skip(m, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return r;
}

static int parse_container(sd_bus_message *m, vfio_broker_container_info *c) {
        const char *name;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *s;
                int v;

                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;
                if (strcmp(name, "Owner") == 0 || strcmp(name, "Label") == 0) {
                        r = sd_bus_message_read(m, "v", "s", &s);
                        char **field = name[0] == 'O' ? &c->owner : &c->label;
                        if (r >= 0 && !(*field = strdup(s)))
                                r = -ENOMEM;
                } else if (strcmp(name, "UID") == 0)
                        r = sd_bus_message_read(m, "v", "u", &c->uid);
                else if (strcmp(name, "Mappings") == 0)
                        r = sd_bus_message_read(m, "v", "u", &c->mappings);
                else if (strcmp(name, "MappedBytes") == 0)
                        r = sd_bus_message_read(m, "v", "t", &c->mapped_bytes);
                else if (strcmp(name, "PageSizes") == 0)
                        r = sd_bus_message_read(m, "v", "t", &c->page_sizes);
                else if (strcmp(name, "DmaAvailable") == 0)
                        r = sd_bus_message_read(m, "v", "u", &c->dma_available);
                else if (strcmp(name, "DirtyTracking") == 0) {
                        r = sd_bus_message_read(m, "v", "b", &v);
                        c->dirty_tracking = v;
                } else if (strcmp(name, "DiscardableRanges") == 0) {
                        uint64_t first, last, granule;
                        r = sd_bus_message_enter_container(m, 'v', "a(ttt)");
                        if (r >= 0)
                                r = sd_bus_message_enter_container(m, 'a', "(ttt)");
                        while (r >= 0 && (r = sd_bus_message_read(m, "(ttt)", &first, &last, &granule)) > 0) {
                                vfio_broker_discardable_range *a = realloc(c->discardable,
                                                                           (c->n_discardable + 1) * sizeof(*a));
                                if (!a)
                                        return -ENOMEM;
                                c->discardable = a;
                                a[c->n_discardable++] = (vfio_broker_discardable_range) { first, last, granule };
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                }
                else if (strcmp(name, "VfioUserDevices") == 0) {
                        r = sd_bus_message_enter_container(m, 'v', "as");
                        if (r >= 0)
                                r = sd_bus_message_read_strv(m, &c->vfio_user_devices);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else if (strcmp(name, "BalloonInhibited") == 0) {
                        r = sd_bus_message_read(m, "v", "b", &v);
                        c->balloon_inhibited = v;
                } else if (strcmp(name, "Groups") == 0) {
                        const void *p;
                        size_t n;
                        r = sd_bus_message_enter_container(m, 'v', "au");
                        if (r >= 0)
                                r = sd_bus_message_read_array(m, 'u', &p, &n);
                        if (r >= 0) {
                                c->n_groups = n / sizeof(uint32_t);
                                c->groups = calloc(c->n_groups ? c->n_groups : 1, sizeof(uint32_t));
                                if (!c->groups)
                                        return -ENOMEM;
                                memcpy(c->groups, p, c->n_groups * sizeof(uint32_t));
                                r = sd_bus_message_exit_container(m);
                        }
                } else if (strcmp(name, "IovaRanges") == 0) {
                        uint64_t first, last;
                        r = sd_bus_message_enter_container(m, 'v', "a(tt)");
                        if (r >= 0)
                                r = sd_bus_message_enter_container(m, 'a', "(tt)");
                        while (r >= 0 && (r = sd_bus_message_read(m, "(tt)", &first, &last)) > 0) {
                                vfio_broker_iova_range *a = realloc(c->iova_ranges,
                                                                    (c->n_iova_ranges + 1) * sizeof(*a));
                                if (!a)
                                        return -ENOMEM;
                                c->iova_ranges = a;
                                a[c->n_iova_ranges++] = (vfio_broker_iova_range) { first, last };
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else
                        r = sd_bus_message_skip(m, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return r;
}

/* Walks GetManagedObjects, calling parse for each object that has iface. */
static int managed_objects(vfio_broker *b, const char *want_iface,
                           int (*parse)(sd_bus_message *m, const char *path, void *userdata), void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path, *iface;
        int r;

        r = call(b, ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", &reply, NULL);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                r = sd_bus_message_read(reply, "o", &path);
                if (r >= 0)
                        r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                        r = sd_bus_message_read(reply, "s", &iface);
                        if (r >= 0)
                                r = strcmp(iface, want_iface) == 0 ? parse(reply, path, userdata)
                                                                  : sd_bus_message_skip(reply, "a{sv}");
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        return r < 0 ? fail_errno(b, r, "Malformed GetManagedObjects reply") : 0;
}

typedef struct GroupList {
        vfio_broker_group *groups;
        size_t n;
} GroupList;

static int collect_group(sd_bus_message *m, const char *path, void *userdata) {
        GroupList *l = userdata;
        vfio_broker_group *a = realloc(l->groups, (l->n + 1) * sizeof(*a));
        if (!a)
                return -ENOMEM;
        l->groups = a;
        a[l->n] = (vfio_broker_group) {};
        return parse_group(m, &a[l->n++]);
}

static int group_compare(const void *a, const void *b) {
        const vfio_broker_group *x = a, *y = b;
        return x->id < y->id ? -1 : x->id > y->id;
}

_public_ int vfio_broker_list_groups(vfio_broker *b, vfio_broker_group **ret, size_t *ret_n) {
        GroupList l = {};
        int r;

        if (!b || !ret || !ret_n)
                return -EINVAL;
        r = managed_objects(b, GROUP_IFACE, collect_group, &l);
        if (r < 0) {
                vfio_broker_groups_free(l.groups, l.n);
                return r;
        }
        if (l.n > 0)
                qsort(l.groups, l.n, sizeof(*l.groups), group_compare);
        *ret = l.groups;
        *ret_n = l.n;
        return 0;
}

_public_ void vfio_broker_groups_free(vfio_broker_group *groups, size_t n) {
        for (size_t i = 0; groups && i < n; i++) {
                strv_free(groups[i].devices);
                free(groups[i].container);
        }
        free(groups);
}

typedef struct ContainerList {
        vfio_broker_container_info *infos;
        size_t n;
} ContainerList;

static int collect_container(sd_bus_message *m, const char *path, void *userdata) {
        ContainerList *l = userdata;
        vfio_broker_container_info *a = realloc(l->infos, (l->n + 1) * sizeof(*a));
        if (!a)
                return -ENOMEM;
        l->infos = a;
        a[l->n] = (vfio_broker_container_info) { .path = strdup(path) };
        if (!a[l->n].path)
                return -ENOMEM;
        return parse_container(m, &a[l->n++]);
}

static uint64_t container_id(const char *path) {
        return strtoull(path + strlen(CONTAINER_PREFIX), NULL, 10);
}

static int container_compare(const void *a, const void *b) {
        uint64_t x = container_id(((const vfio_broker_container_info *) a)->path);
        uint64_t y = container_id(((const vfio_broker_container_info *) b)->path);
        return x < y ? -1 : x > y;
}

_public_ int vfio_broker_list_containers(vfio_broker *b, vfio_broker_container_info **ret, size_t *ret_n) {
        ContainerList l = {};
        int r;

        if (!b || !ret || !ret_n)
                return -EINVAL;
        r = managed_objects(b, CONTAINER_IFACE, collect_container, &l);
        if (r < 0) {
                vfio_broker_container_infos_free(l.infos, l.n);
                return r;
        }
        if (l.n > 0)
                qsort(l.infos, l.n, sizeof(*l.infos), container_compare);
        *ret = l.infos;
        *ret_n = l.n;
        return 0;
}

/* "3" or "/org/vfiobroker/Broker1/container/3" -> the path. */
static int resolve_container_path(vfio_broker *b, const char *path_or_id, char **ret) {
        char *end;

        if (!path_or_id || !*path_or_id)
                return -EINVAL;
        if (path_or_id[0] == '/') {
                if (!sd_bus_object_path_is_valid(path_or_id)) {
                        set_error(b, SD_BUS_ERROR_INVALID_ARGS, "Not a valid object path.");
                        return -EINVAL;
                }
                *ret = strdup(path_or_id);
        } else {
                errno = 0;
                unsigned long long id = strtoull(path_or_id, &end, 10);
                if (errno != 0 || *end != 0 || path_or_id[0] == '-' || id == 0) {
                        set_error(b, SD_BUS_ERROR_INVALID_ARGS, "A container is named by its id or object path.");
                        return -EINVAL;
                }
                if (asprintf(ret, CONTAINER_PREFIX "%llu", id) < 0)
                        return -ENOMEM;
        }
        return *ret ? 0 : -ENOMEM;
}

static int container_info_by_path(vfio_broker *b, const char *path, vfio_broker_container_info *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        vfio_broker_container_info info = {};
        int r;

        r = call(b, path, "org.freedesktop.DBus.Properties", "GetAll", &reply, "s", CONTAINER_IFACE);
        if (r < 0)
                return r;
        info.path = strdup(path);
        if (!info.path)
                return -ENOMEM;
        r = parse_container(reply, &info);
        if (r < 0) {
                vfio_broker_container_info_clear(&info);
                return fail_errno(b, r, "Malformed container properties");
        }
        *ret = info;
        return 0;
}

_public_ int vfio_broker_get_container_info(vfio_broker *b, const char *path_or_id, vfio_broker_container_info *ret) {
        _cleanup_free_ char *path = NULL;
        int r;

        if (!b || !ret)
                return -EINVAL;
        r = resolve_container_path(b, path_or_id, &path);
        if (r < 0)
                return r;
        return container_info_by_path(b, path, ret);
}

_public_ void vfio_broker_container_info_clear(vfio_broker_container_info *info) {
        if (!info)
                return;
        free(info->path);
        free(info->owner);
        free(info->label);
        free(info->groups);
        free(info->iova_ranges);
        free(info->discardable);
        strv_free(info->vfio_user_devices);
        *info = (vfio_broker_container_info) {};
}

_public_ void vfio_broker_container_infos_free(vfio_broker_container_info *infos, size_t n) {
        for (size_t i = 0; infos && i < n; i++)
                vfio_broker_container_info_clear(&infos[i]);
        free(infos);
}

_public_ int vfio_broker_close_container(vfio_broker *b, const char *path_or_id) {
        _cleanup_free_ char *path = NULL;
        int r;

        if (!b)
                return -EINVAL;
        r = resolve_container_path(b, path_or_id, &path);
        if (r < 0)
                return r;
        return call(b, path, CONTAINER_IFACE, "Close", NULL, NULL);
}

_public_ int vfio_broker_container_new(vfio_broker *b, const char *label, vfio_broker_container **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        vfio_broker_container *c;
        const char *path;
        int r;

        if (!b || !ret)
                return -EINVAL;
        if (label)
                r = call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 1, "Label", "s", label);
        else
                r = call(b, ROOT_PATH, MANAGER_IFACE, "CreateContainer", &reply, "a{sv}", 0);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                return fail_errno(b, r, "Malformed CreateContainer reply");

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->path = strdup(path);
        if (!c->path) {
                free(c);
                return -ENOMEM;
        }
        c->broker = broker_ref(b);
        *ret = c;
        return 0;
}

_public_ const char *vfio_broker_container_get_path(const vfio_broker_container *c) {
        return c ? c->path : NULL;
}

_public_ int vfio_broker_container_attach_group(vfio_broker_container *c, uint32_t group) {
        return c ? call(c->broker, c->path, CONTAINER_IFACE, "AttachGroup", NULL, "u", group) : -EINVAL;
}

_public_ int vfio_broker_container_detach_group(vfio_broker_container *c, uint32_t group) {
        return c ? call(c->broker, c->path, CONTAINER_IFACE, "DetachGroup", NULL, "u", group) : -EINVAL;
}

_public_ int vfio_broker_container_open_device(vfio_broker_container *c, const char *device) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd, r;

        if (!c || !device)
                return -EINVAL;
        r = call(c->broker, c->path, CONTAINER_IFACE, "OpenDevice", &reply, "s", device);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "h", &fd);
        if (r < 0)
                return fail_errno(c->broker, r, "Malformed OpenDevice reply");
        /* The message owns its fd; the caller gets its own. */
        fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        return fd < 0 ? fail_errno(c->broker, -errno, "Cannot duplicate the device fd") : fd;
}

_public_ int vfio_broker_container_map(vfio_broker_container *c, int memory_fd, uint64_t offset, uint64_t size,
                                       uint64_t iova, uint32_t flags) {
        if (!c || memory_fd < 0)
                return -EINVAL;
        return call(c->broker, c->path, CONTAINER_IFACE, "Map", NULL, "htttu", memory_fd, offset, size, iova, flags);
}

_public_ int vfio_broker_container_unmap(vfio_broker_container *c, uint64_t iova, uint64_t size) {
        return c ? call(c->broker, c->path, CONTAINER_IFACE, "Unmap", NULL, "tt", iova, size) : -EINVAL;
}

_public_ int vfio_broker_container_serve_vfio_user(vfio_broker_container *c, const char *device, int listener_fd) {
        if (!c || !device || listener_fd < 0)
                return -EINVAL;
        return call(c->broker, c->path, CONTAINER_IFACE, "ServeVfioUser", NULL, "sh", device, listener_fd);
}

_public_ int vfio_broker_container_stop_vfio_user(vfio_broker_container *c, const char *device) {
        return c && device ? call(c->broker, c->path, CONTAINER_IFACE, "StopVfioUser", NULL, "s", device) : -EINVAL;
}

_public_ int vfio_broker_container_hot_reset(vfio_broker_container *c, const char *device) {
        return c && device ? call(c->broker, c->path, CONTAINER_IFACE, "HotReset", NULL, "s", device) : -EINVAL;
}

_public_ int vfio_broker_container_start_dirty_tracking(vfio_broker_container *c) {
        return c ? call(c->broker, c->path, CONTAINER_IFACE, "StartDirtyTracking", NULL, NULL) : -EINVAL;
}

_public_ int vfio_broker_container_stop_dirty_tracking(vfio_broker_container *c) {
        return c ? call(c->broker, c->path, CONTAINER_IFACE, "StopDirtyTracking", NULL, NULL) : -EINVAL;
}

static int dirty_bitmap_call(vfio_broker_container *c, const char *method, uint64_t iova, uint64_t size,
                             uint64_t page_size, int bitmap_fd, uint64_t bitmap_offset, uint64_t *ret_dirty_pages) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t dirty;
        int r;

        if (!c || bitmap_fd < 0)
                return -EINVAL;
        r = call(c->broker, c->path, CONTAINER_IFACE, method, &reply, "tttht", iova, size,
                 page_size, bitmap_fd, bitmap_offset);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "t", &dirty);
        if (r < 0)
                return fail_errno(c->broker, r, "Malformed dirty bitmap reply");
        if (ret_dirty_pages)
                *ret_dirty_pages = dirty;
        return 0;
}

_public_ int vfio_broker_container_get_dirty_bitmap(vfio_broker_container *c, uint64_t iova, uint64_t size,
                                                    uint64_t page_size, int bitmap_fd, uint64_t bitmap_offset,
                                                    uint64_t *ret_dirty_pages) {
        return dirty_bitmap_call(c, "GetDirtyBitmap", iova, size, page_size, bitmap_fd, bitmap_offset,
                                 ret_dirty_pages);
}

_public_ int vfio_broker_container_unmap_dirty(vfio_broker_container *c, uint64_t iova, uint64_t size,
                                               uint64_t page_size, int bitmap_fd, uint64_t bitmap_offset,
                                               uint64_t *ret_dirty_pages) {
        return dirty_bitmap_call(c, "UnmapWithDirtyBitmap", iova, size, page_size, bitmap_fd, bitmap_offset,
                                 ret_dirty_pages);
}

_public_ int vfio_broker_container_map_discardable(vfio_broker_container *c, int memory_fd, uint64_t offset,
                                                   uint64_t size, uint64_t iova, uint32_t flags, uint64_t granule,
                                                   bool populated) {
        if (!c || memory_fd < 0)
                return -EINVAL;
        return call(c->broker, c->path, CONTAINER_IFACE, "MapDiscardable", NULL, "htttutb", memory_fd, offset, size,
                    iova, flags, granule, (int) populated);
}

_public_ int vfio_broker_container_discard(vfio_broker_container *c, uint64_t iova, uint64_t size) {
        return c ? call(c->broker, c->path, CONTAINER_IFACE, "Discard", NULL, "tt", iova, size) : -EINVAL;
}

_public_ int vfio_broker_container_populate(vfio_broker_container *c, uint64_t iova, uint64_t size) {
        return c ? call(c->broker, c->path, CONTAINER_IFACE, "Populate", NULL, "tt", iova, size) : -EINVAL;
}

/* One Update message on the peer connection if there is one, else on the bus. */
static int update_message(vfio_broker *b, const char *path, const vfio_broker_unmap *unmaps, size_t n_unmaps,
                          const int *fds, size_t n_fds, const vfio_broker_map *maps, size_t n_maps,
                          sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus *target = b->peer ?: b->bus;
        int r;

        r = sd_bus_message_new_method_call(target, &m, b->peer ? NULL : BUS_NAME, path, CONTAINER_IFACE, "Update");
        if (r >= 0)
                (void) sd_bus_message_set_allow_interactive_authorization(m, true);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(tt)");
        for (size_t i = 0; r >= 0 && i < n_unmaps; i++)
                r = sd_bus_message_append(m, "(tt)", unmaps[i].iova, unmaps[i].size);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "h");
        for (size_t i = 0; r >= 0 && i < n_fds; i++)
                r = sd_bus_message_append(m, "h", fds[i]);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(utttu)");
        for (size_t i = 0; r >= 0 && i < n_maps; i++)
                r = sd_bus_message_append(m, "(utttu)", maps[i].memory, maps[i].offset, maps[i].size, maps[i].iova,
                                          maps[i].flags);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot build the Update call: %s", strerror(-r));
        return sd_bus_call(target, m, 0, error, NULL);
}

/* The last IOVA of a range; a range that wraps reaches the end of the address space. */
static uint64_t range_last(uint64_t iova, uint64_t size) {
        return size == 0 ? iova : iova + size - 1 < iova ? UINT64_MAX : iova + size - 1;
}

static int unmap_compare(const void *a, const void *b) {
        const vfio_broker_unmap *x = a, *y = b;
        return x->iova < y->iova ? -1 : x->iova > y->iova;
}

/* Marks the memory fds of maps that intersect an unmap range of the same Update: those maps can
 * only be made after the unmaps, so they travel in the message that carries the unmaps. */
static int mark_after_unmaps(const vfio_broker_unmap *unmaps, size_t n_unmaps, const vfio_broker_map *maps,
                             size_t n_maps, bool *after) {
        _cleanup_free_ vfio_broker_unmap *sorted = NULL;
        _cleanup_free_ uint64_t *max_last = NULL;

        if (n_unmaps == 0)
                return 0;
        sorted = malloc(n_unmaps * sizeof(*sorted));
        max_last = malloc(n_unmaps * sizeof(*max_last));
        if (!sorted || !max_last)
                return -ENOMEM;
        memcpy(sorted, unmaps, n_unmaps * sizeof(*sorted));
        qsort(sorted, n_unmaps, sizeof(*sorted), unmap_compare);
        for (size_t i = 0; i < n_unmaps; i++) {
                uint64_t last = range_last(sorted[i].iova, sorted[i].size);
                max_last[i] = i > 0 && max_last[i - 1] > last ? max_last[i - 1] : last;
        }
        for (size_t i = 0; i < n_maps; i++) {
                uint64_t first = maps[i].iova, last = range_last(maps[i].iova, maps[i].size);
                size_t lo = 0, hi = n_unmaps;

                /* The unmaps starting at or before the map's last byte; one of them reaches it iff the
                 * largest end among them does. */
                while (lo < hi) {
                        size_t mid = lo + (hi - lo) / 2;
                        if (sorted[mid].iova <= last)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                if (lo > 0 && max_last[lo - 1] >= first)
                        after[maps[i].memory] = true;
        }
        return 0;
}

/* Removes what earlier parts of a split Update mapped: exactly their ranges, so it cannot fail on
 * WouldSplit or NotMapped. */
static int update_undo(vfio_broker *b, const char *path, const vfio_broker_map *maps, const size_t *part_of_map,
                       size_t n_maps, size_t n_parts_done) {
        _cleanup_free_ vfio_broker_unmap *undo = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        size_t n = 0;
        int r;

        undo = malloc((n_maps ?: 1) * sizeof(*undo));
        if (!undo)
                return -ENOMEM;
        for (size_t i = 0; i < n_maps; i++)
                if (part_of_map[i] < n_parts_done)
                        undo[n++] = (vfio_broker_unmap) { maps[i].iova, maps[i].size };
        if (n == 0)
                return 0;
        r = update_message(b, path, undo, n, NULL, 0, NULL, 0, &error);
        sd_bus_error_free(&error);
        return r;
}

/* The daemon numbers the maps of the message it got ("Map #3: ..."); the caller's numbers differ
 * when the Update was split. */
static void set_update_error(vfio_broker *b, const sd_bus_error *error, int r, const size_t *orig_index,
                             size_t n_part_maps, bool undo_failed) {
        const char *text = error->message ?: strerror(-r);
        char message[sizeof(b->error_message)];
        unsigned long k;
        int skip = 0;

        if (orig_index && sscanf(text, "Map #%lu%n", &k, &skip) == 1 && skip > 0 && k < n_part_maps)
                snprintf(message, sizeof(message), "Map #%zu%s", orig_index[k], text + skip);
        else
                snprintf(message, sizeof(message), "%s", text);
        if (undo_failed)
                snprintf(message + strlen(message), sizeof(message) - strlen(message),
                         " Undoing the parts of this Update sent before failed too: maps of it may remain.");
        set_error(b, error->name, message);
}

/* Update() whole when its fds fit in one message, else split so that no message carries more fds
 * than the transport passes. A bus daemon does not refuse a message with too many fds, it
 * disconnects the sender, and the broker then closes every container of that connection. A split
 * Update stays all or nothing: the maps whose fds are not needed after the unmaps go first, in
 * parts of at most the limit; the last part carries the unmaps and the maps that intersect them,
 * and the daemon applies it whole; when a part fails, the maps of the parts before are unmapped. */
_public_ int vfio_broker_container_update(vfio_broker_container *c, const vfio_broker_unmap *unmaps, size_t n_unmaps,
                                         const int *memory_fds, size_t n_fds, const vfio_broker_map *maps,
                                         size_t n_maps) {
        _cleanup_free_ bool *after = NULL;
        _cleanup_free_ size_t *part_of_fd = NULL, *part_of_map = NULL, *index_in_part = NULL, *orig_index = NULL;
        _cleanup_free_ int *part_fds = NULL;
        _cleanup_free_ vfio_broker_map *part_maps = NULL;
        vfio_broker *b;
        int r;

        if (!c || (n_unmaps && !unmaps) || (n_fds && !memory_fds) || (n_maps && !maps))
                return -EINVAL;
        b = c->broker;
        set_error(b, NULL, NULL);

        /* Refuse here what the daemon would refuse, before any part is sent. */
        if (n_unmaps > BROKER_UPDATE_MAX || n_maps > BROKER_UPDATE_MAX) {
                char message[128];
                snprintf(message, sizeof(message), "At most %d %s per Update.", BROKER_UPDATE_MAX,
                         n_unmaps > BROKER_UPDATE_MAX ? "unmaps" : "maps");
                set_error(b, SD_BUS_ERROR_INVALID_ARGS, message);
                return -EINVAL;
        }
        for (size_t i = 0; i < n_maps; i++)
                if (maps[i].memory >= n_fds) {
                        char message[128];
                        snprintf(message, sizeof(message), "Map #%zu names memory fd #%" PRIu32 ", but %zu fds were passed.",
                                 i, maps[i].memory, n_fds);
                        set_error(b, SD_BUS_ERROR_INVALID_ARGS, message);
                        return -EINVAL;
                }

        for (int attempt = 0;; attempt++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                size_t limit = b->peer ? BROKER_UPDATE_FDS_MAX : BROKER_BUS_MESSAGE_FDS_MAX;
                size_t n_parts, n_early = 0, n_late = 0, failed_part = 0, n_failed_maps = 0;
                bool undo_failed = false;

                if (n_fds <= limit) {
                        r = update_message(b, c->path, unmaps, n_unmaps, memory_fds, n_fds, maps, n_maps, &error);
                        if (r < 0 && b->peer && connection_lost(r) && attempt == 0) {
                                /* The broker restarted: again on the bus or a new peer connection. */
                                sd_bus_error_free(&error);
                                b->peer = sd_bus_flush_close_unref(b->peer);
                                open_peer(b);
                                continue;
                        }
                        if (r < 0) {
                                set_update_error(b, &error, r, NULL, 0, false);
                                r = error_to_errno(&error, r);
                        }
                        sd_bus_error_free(&error);
                        return r < 0 ? r : 0;
                }

                /* Plan: the fds needed after the unmaps go in the last part, the others before it. */
                free(after);
                after = calloc(n_fds, sizeof(*after));
                if (!after)
                        return -ENOMEM;
                r = mark_after_unmaps(unmaps, n_unmaps, maps, n_maps, after);
                if (r < 0)
                        return fail_errno(b, r, "Cannot plan the Update");
                for (size_t i = 0; i < n_fds; i++)
                        if (after[i])
                                n_late++;
                        else
                                n_early++;
                if (n_late > limit) {
                        char message[320];
                        snprintf(message, sizeof(message),
                                 "%zu memory fds back maps that intersect this Update's unmaps, but one message on %s "
                                 "passes at most %zu fds and those maps must go in one message with the unmaps to stay "
                                 "all or nothing: send them in several Updates.",
                                 n_late, b->peer ? "the peer connection" : "the bus", limit);
                        set_error(b, SD_BUS_ERROR_LIMITS_EXCEEDED, message);
                        return -E2BIG;
                }
                n_parts = (n_early + limit - 1) / limit + 1;

                free(part_of_fd);
                free(index_in_part);
                part_of_fd = malloc(n_fds * sizeof(*part_of_fd));
                index_in_part = malloc(n_fds * sizeof(*index_in_part));
                if (!part_of_fd || !index_in_part)
                        return -ENOMEM;
                for (size_t i = 0, k = 0, last = 0; i < n_fds; i++) {
                        if (after[i]) {
                                part_of_fd[i] = n_parts - 1;
                                index_in_part[i] = last++;
                        } else {
                                part_of_fd[i] = k / limit;
                                index_in_part[i] = k % limit;
                                k++;
                        }
                }
                free(part_of_map);
                part_of_map = malloc((n_maps ?: 1) * sizeof(*part_of_map));
                if (!part_of_map)
                        return -ENOMEM;
                for (size_t i = 0; i < n_maps; i++)
                        part_of_map[i] = part_of_fd[maps[i].memory];

                if (!part_fds) {
                        part_fds = malloc(BROKER_UPDATE_FDS_MAX * sizeof(*part_fds));
                        part_maps = malloc((n_maps ?: 1) * sizeof(*part_maps));
                        orig_index = malloc((n_maps ?: 1) * sizeof(*orig_index));
                        if (!part_fds || !part_maps || !orig_index)
                                return -ENOMEM;
                }

                r = 0;
                for (size_t p = 0; p < n_parts; p++) {
                        bool last = p == n_parts - 1;
                        size_t nf = 0, nm = 0;

                        for (size_t i = 0; i < n_fds; i++)
                                if (part_of_fd[i] == p)
                                        part_fds[nf++] = memory_fds[i];
                        for (size_t i = 0; i < n_maps; i++)
                                if (part_of_map[i] == p) {
                                        part_maps[nm] = maps[i];
                                        part_maps[nm].memory = index_in_part[maps[i].memory];
                                        orig_index[nm++] = i;
                                }
                        if (last && nf == 0 && n_unmaps == 0)
                                break;
                        r = update_message(b, c->path, last ? unmaps : NULL, last ? n_unmaps : 0, part_fds, nf,
                                           part_maps, nm, &error);
                        if (r < 0) {
                                failed_part = p;
                                n_failed_maps = nm;
                                break;
                        }
                }
                if (r >= 0)
                        return 0;

                bool lost = b->peer && connection_lost(r);
                if (lost) {
                        /* The broker restarted (mappings survive that): undo and retry on the bus or a
                         * new peer connection. */
                        b->peer = sd_bus_flush_close_unref(b->peer);
                        open_peer(b);
                }
                if (failed_part > 0 && update_undo(b, c->path, maps, part_of_map, n_maps, failed_part) < 0)
                        undo_failed = true;
                if (lost && attempt == 0 && !undo_failed) {
                        sd_bus_error_free(&error);
                        continue;
                }
                set_update_error(b, &error, r, orig_index, n_failed_maps, undo_failed);
                r = error_to_errno(&error, r);
                sd_bus_error_free(&error);
                return r;
        }
}

_public_ int vfio_broker_container_get_info(vfio_broker_container *c, vfio_broker_container_info *ret) {
        if (!c || !ret)
                return -EINVAL;
        return container_info_by_path(c->broker, c->path, ret);
}

static int on_container_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        vfio_broker_container *c = userdata;
        const char *iface, *name;
        int inhibited;

        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, CONTAINER_IFACE) != 0)
                return 0;
        if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                if (sd_bus_message_read(m, "s", &name) < 0)
                        return 0;
                if (strcmp(name, "BalloonInhibited") == 0 && sd_bus_message_read(m, "v", "b", &inhibited) >= 0) {
                        if (c->balloon_handler)
                                c->balloon_handler(c, inhibited, c->balloon_userdata);
                } else if (sd_bus_message_skip(m, "v") < 0)
                        return 0;
                if (sd_bus_message_exit_container(m) < 0)
                        return 0;
        }
        return 0;
}

_public_ int vfio_broker_container_watch_balloon(vfio_broker_container *c, vfio_broker_container_balloon_handler handler,
                                                 void *userdata) {
        int r;

        if (!c)
                return -EINVAL;
        c->balloon_slot = sd_bus_slot_unref(c->balloon_slot);
        c->balloon_handler = handler;
        c->balloon_userdata = userdata;
        if (!handler)
                return 0;
        r = sd_bus_match_signal(c->broker->bus, &c->balloon_slot, BUS_NAME, c->path,
                                "org.freedesktop.DBus.Properties", "PropertiesChanged", on_container_changed, c);
        return r < 0 ? fail_errno(c->broker, r, "Cannot subscribe to PropertiesChanged") : 0;
}

_public_ int vfio_broker_container_close(vfio_broker_container *c) {
        int r;

        if (!c)
                return -EINVAL;
        r = call(c->broker, c->path, CONTAINER_IFACE, "Close", NULL, NULL);
        vfio_broker_container_free(c);
        return r;
}

_public_ vfio_broker_container *vfio_broker_container_free(vfio_broker_container *c) {
        if (!c)
                return NULL;
        sd_bus_slot_unref(c->balloon_slot);
        vfio_broker_unref(c->broker);
        free(c->path);
        free(c);
        return NULL;
}
