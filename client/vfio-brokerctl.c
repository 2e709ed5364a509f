/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vfio-brokerctl: inspect and administer vfio-brokerd. See vfio-brokerctl(1). */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <libgen.h>
#include <unistd.h>

#include "broker-wire.h"
#include "format-util.h"
#include "macro.h"
#include "vfio-broker/vfio-broker.h"

/* Exit codes scripts can rely on (vfio-brokerctl(1)). */
enum {
        EXIT_OK = 0,
        EXIT_ERROR = 1,         /* the broker refused or failed the request */
        EXIT_USAGE = 2,
        EXIT_UNAVAILABLE = 3,   /* no bus, or no broker on it */
        EXIT_NOT_FOUND = 4,     /* no such container */
        EXIT_DENIED = 5,        /* not authorized */
};

static bool arg_json;

/* The bus answers for a name nobody owns: not activatable (ServiceUnknown, NameHasNoOwner), or activation
 * was tried and failed (Spawn.*, or systemd's errors when the bus activates through systemd). */
static bool broker_not_running(const char *name, int r) {
        return strstr(name, "ServiceUnknown") || strstr(name, "NameHasNoOwner") ||
               strncmp(name, "org.freedesktop.DBus.Error.Spawn.", 33) == 0 ||
               strncmp(name, "org.freedesktop.systemd1.", 25) == 0 || (!*name && r == -ECONNREFUSED);
}

static int exit_for(vfio_broker *b, int r, const char *what) {
        const char *name = vfio_broker_error_name(b);
        const char *message = vfio_broker_error_message(b);

        if (broker_not_running(name, r)) {
                fprintf(stderr, "vfio-brokerctl: vfio-brokerd is not running (nobody owns org.vfiobroker.Broker1 on "
                        "the system bus).\nStart it with: systemctl start vfio-brokerd\n");
                /* Why activation failed, when the bus tried: the administrator's next clue. */
                if (!strstr(name, "ServiceUnknown") && !strstr(name, "NameHasNoOwner") && message && *message)
                        fprintf(stderr, "(the bus said: %s)\n", message);
                return EXIT_UNAVAILABLE;
        }
        fprintf(stderr, "vfio-brokerctl: %s: %s\n", what, message && *message ? message : strerror(-r));
        if (strstr(name, "UnknownObject"))
                return EXIT_NOT_FOUND;
        if (strstr(name, "AccessDenied"))
                return EXIT_DENIED;
        if (strstr(name, "InvalidArgs"))
                return EXIT_USAGE;
        return EXIT_ERROR;
}

static void print_json(json_object *o) {
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
}

static json_object *json_u64(uint64_t v) {
        /* JSON numbers are int64 in json-c; every value here fits (bytes, counts, bitmaps < 2^63). */
        return json_object_new_int64(v > INT64_MAX ? INT64_MAX : (int64_t) v);
}

static char *join_u32(const uint32_t *l, size_t n, char *buf, size_t size) {
        size_t off = 0;
        buf[0] = 0;
        for (size_t i = 0; i < n && off < size; i++)
                off += snprintf(buf + off, size - off, "%s%" PRIu32, i ? "," : "", l[i]);
        if (n == 0)
                snprintf(buf, size, "-");
        return buf;
}

static json_object *container_to_json(const vfio_broker_container_info *c) {
        json_object *o = json_object_new_object(), *groups = json_object_new_array(), *ranges = json_object_new_array();
        const char *id = strrchr(c->path, '/');

        json_object_object_add(o, "id", json_object_new_int64(strtoll(id ? id + 1 : "0", NULL, 10)));
        json_object_object_add(o, "path", json_object_new_string(c->path));
        json_object_object_add(o, "owner", json_object_new_string(c->owner ?: ""));
        json_object_object_add(o, "uid", json_object_new_int64(c->uid));
        json_object_object_add(o, "label", json_object_new_string(c->label ?: ""));
        for (size_t i = 0; i < c->n_groups; i++)
                json_object_array_add(groups, json_object_new_int64(c->groups[i]));
        json_object_object_add(o, "groups", groups);
        json_object_object_add(o, "mappings", json_object_new_int64(c->mappings));
        json_object_object_add(o, "mapped_bytes", json_u64(c->mapped_bytes));
        json_object_object_add(o, "balloon_inhibited", json_object_new_boolean(c->balloon_inhibited));
        for (size_t i = 0; i < c->n_iova_ranges; i++) {
                json_object *r = json_object_new_object();
                json_object_object_add(r, "first", json_u64(c->iova_ranges[i].first));
                json_object_object_add(r, "last", json_u64(c->iova_ranges[i].last));
                json_object_array_add(ranges, r);
        }
        json_object_object_add(o, "iova_ranges", ranges);
        json_object_object_add(o, "page_sizes", json_u64(c->page_sizes));
        json_object_object_add(o, "dma_available", json_object_new_int64(c->dma_available));
        json_object_object_add(o, "dirty_tracking", json_object_new_boolean(c->dirty_tracking));
        json_object *discardable = json_object_new_array();
        for (size_t i = 0; i < c->n_discardable; i++) {
                json_object *r = json_object_new_object();
                json_object_object_add(r, "first", json_u64(c->discardable[i].first));
                json_object_object_add(r, "last", json_u64(c->discardable[i].last));
                json_object_object_add(r, "granule", json_u64(c->discardable[i].granule));
                json_object_array_add(discardable, r);
        }
        json_object_object_add(o, "discardable", discardable);
        json_object *served = json_object_new_array();
        for (char **d = c->vfio_user_devices; d && *d; d++)
                json_object_array_add(served, json_object_new_string(*d));
        json_object_object_add(o, "vfio_user_devices", served);
        return o;
}

static int cmd_status(vfio_broker *b, int argc, char **argv) {
        vfio_broker_status s;
        vfio_broker_group *groups = NULL;
        vfio_broker_container_info *containers = NULL;
        size_t n_groups = 0, n_containers = 0;
        int r;

        r = vfio_broker_get_status(b, &s);
        if (r < 0)
                return exit_for(b, r, "Cannot read the broker's status");
        r = vfio_broker_list_groups(b, &groups, &n_groups);
        if (r >= 0)
                r = vfio_broker_list_containers(b, &containers, &n_containers);
        if (r < 0) {
                vfio_broker_status_clear(&s);
                return exit_for(b, r, "Cannot list the broker's objects");
        }

        if (arg_json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "version", json_object_new_string(s.version));
                json_object_object_add(o, "backend", json_object_new_string(s.backend));
                json_object_object_add(o, "balloon_inhibited", json_object_new_boolean(s.balloon_inhibited));
                json_object_object_add(o, "balloon_inhibitors", json_object_new_int64(s.balloon_inhibitors));
                json_object_object_add(o, "groups", json_object_new_int64((int64_t) n_groups));
                json_object_object_add(o, "containers", json_object_new_int64((int64_t) n_containers));
                print_json(o);
        } else {
                printf("Version:            %s\n", s.version);
                printf("Backend:            %s\n", s.backend);
                printf("Balloon inhibited:  %s\n", s.balloon_inhibited ? "yes" : "no");
                printf("Balloon inhibitors: %" PRIu32 "\n", s.balloon_inhibitors);
                printf("VFIO groups:        %zu\n", n_groups);
                printf("Containers:         %zu\n", n_containers);
        }
        vfio_broker_status_clear(&s);
        vfio_broker_groups_free(groups, n_groups);
        vfio_broker_container_infos_free(containers, n_containers);
        return EXIT_OK;
}

static int cmd_groups(vfio_broker *b, int argc, char **argv) {
        vfio_broker_group *groups = NULL;
        size_t n = 0, width = 7;
        int r;

        r = vfio_broker_list_groups(b, &groups, &n);
        if (r < 0)
                return exit_for(b, r, "Cannot list groups");

        if (arg_json) {
                json_object *a = json_object_new_array();
                for (size_t i = 0; i < n; i++) {
                        json_object *o = json_object_new_object(), *d = json_object_new_array();
                        json_object_object_add(o, "id", json_object_new_int64(groups[i].id));
                        for (char **s = groups[i].devices; s && *s; s++)
                                json_object_array_add(d, json_object_new_string(*s));
                        json_object_object_add(o, "devices", d);
                        json_object_object_add(o, "viable", json_object_new_boolean(groups[i].viable));
                        json_object_object_add(o, "container", groups[i].container ?
                                               json_object_new_string(groups[i].container) : NULL);
                        json_object_array_add(a, o);
                }
                print_json(a);
        } else {
                for (size_t i = 0; i < n; i++) {
                        size_t w = 0;
                        for (char **s = groups[i].devices; s && *s; s++)
                                w += strlen(*s) + (s != groups[i].devices);
                        if (w > width)
                                width = w;
                }
                printf("%-6s %-*s %-7s %s\n", "GROUP", (int) width, "DEVICES", "VIABLE", "CONTAINER");
                for (size_t i = 0; i < n; i++) {
                        char devices[1024] = "";
                        size_t off = 0;
                        for (char **s = groups[i].devices; s && *s && off < sizeof(devices); s++)
                                off += snprintf(devices + off, sizeof(devices) - off, "%s%s",
                                                s == groups[i].devices ? "" : ",", *s);
                        printf("%-6" PRIu32 " %-*s %-7s %s\n", groups[i].id, (int) width, devices,
                               groups[i].viable ? "yes" : "no", groups[i].container ?: "-");
                }
        }
        vfio_broker_groups_free(groups, n);
        return EXIT_OK;
}

static int cmd_list(vfio_broker *b, int argc, char **argv) {
        vfio_broker_container_info *c = NULL;
        size_t n = 0, lw = 5, ow = 5;
        int r;

        r = vfio_broker_list_containers(b, &c, &n);
        if (r < 0)
                return exit_for(b, r, "Cannot list containers");

        if (arg_json) {
                json_object *a = json_object_new_array();
                for (size_t i = 0; i < n; i++)
                        json_object_array_add(a, container_to_json(&c[i]));
                print_json(a);
        } else {
                for (size_t i = 0; i < n; i++) {
                        if (strlen(c[i].label) > lw)
                                lw = strlen(c[i].label);
                        if (strlen(c[i].owner) > ow)
                                ow = strlen(c[i].owner);
                }
                printf("%-5s %-*s %-6s %-*s %-10s %8s %10s\n", "ID", (int) ow, "OWNER", "UID", (int) lw, "LABEL",
                       "GROUPS", "MAPPINGS", "BYTES");
                for (size_t i = 0; i < n; i++) {
                        char groups[256], bytes[32];
                        printf("%-5s %-*s %-6" PRIu32 " %-*s %-10s %8" PRIu32 " %10s\n", strrchr(c[i].path, '/') + 1,
                               (int) ow, c[i].owner, c[i].uid, (int) lw, *c[i].label ? c[i].label : "-",
                               join_u32(c[i].groups, c[i].n_groups, groups, sizeof(groups)), c[i].mappings,
                               format_bytes(c[i].mapped_bytes, bytes, sizeof(bytes)));
                }
                if (n == 0)
                        printf("(no containers)\n");
        }
        vfio_broker_container_infos_free(c, n);
        return EXIT_OK;
}

static int cmd_show(vfio_broker *b, int argc, char **argv) {
        vfio_broker_container_info c;
        char groups[256], bytes[32];
        int r;

        r = vfio_broker_get_container_info(b, argv[1], &c);
        if (r < 0)
                return exit_for(b, r, "Cannot show the container");

        if (arg_json)
                print_json(container_to_json(&c));
        else {
                printf("Container:         %s\n", c.path);
                printf("Label:             %s\n", *c.label ? c.label : "-");
                printf("Owner:             %s (uid %" PRIu32 ")\n", c.owner, c.uid);
                printf("Groups:            %s\n", join_u32(c.groups, c.n_groups, groups, sizeof(groups)));
                printf("Mappings:          %" PRIu32 "\n", c.mappings);
                printf("Mapped bytes:      %" PRIu64 " (%s)\n", c.mapped_bytes,
                       format_bytes(c.mapped_bytes, bytes, sizeof(bytes)));
                printf("Balloon inhibited: %s\n", c.balloon_inhibited ? "yes" : "no");
                printf("Page sizes:        0x%" PRIx64 "\n", c.page_sizes);
                printf("IOVA ranges:      ");
                for (size_t i = 0; i < c.n_iova_ranges; i++)
                        printf(" [0x%" PRIx64 ", 0x%" PRIx64 "]", c.iova_ranges[i].first, c.iova_ranges[i].last);
                printf("%s\n", c.n_iova_ranges ? "" : " -");
                printf("DMA available:     %" PRIu32 "\n", c.dma_available);
                printf("Dirty tracking:    %s\n", c.dirty_tracking ? "yes" : "no");
                printf("Discardable:      ");
                for (size_t i = 0; i < c.n_discardable; i++)
                        printf(" [0x%" PRIx64 ", 0x%" PRIx64 "]/0x%" PRIx64, c.discardable[i].first,
                               c.discardable[i].last, c.discardable[i].granule);
                printf("%s\n", c.n_discardable ? "" : " -");
                printf("vfio-user:        ");
                for (char **d = c.vfio_user_devices; d && *d; d++)
                        printf(" %s", *d);
                printf("%s\n", c.vfio_user_devices && c.vfio_user_devices[0] ? "" : " -");
        }
        vfio_broker_container_info_clear(&c);
        return EXIT_OK;
}

static int cmd_close(vfio_broker *b, int argc, char **argv) {
        int r;

        r = vfio_broker_close_container(b, argv[1]);
        if (r < 0)
                return exit_for(b, r, "Cannot close the container");
        if (!arg_json)
                printf("Closed %s.\n", argv[1]);
        return EXIT_OK;
}

/* monitor: one line (or one JSON object per line) per change, until SIGINT/SIGTERM or until whoever
 * reads the output goes away. */

/* Reads the next complete value of any D-Bus type as JSON, so that every property (those of today and
 * those added later) is shown with its value rather than as null. Structs of two or three uint64 are the
 * interface's ranges (IovaRanges a(tt), DiscardableRanges a(ttt)) and read like they do in list --json. */
static int read_json(sd_bus_message *m, json_object **ret) {
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r <= 0)
                return r < 0 ? r : -EBADMSG;

        if (type == SD_BUS_TYPE_ARRAY || type == SD_BUS_TYPE_STRUCT || type == SD_BUS_TYPE_VARIANT ||
            type == SD_BUS_TYPE_DICT_ENTRY) {
                bool dict = type == SD_BUS_TYPE_ARRAY && contents[0] == SD_BUS_TYPE_DICT_ENTRY_BEGIN;
                bool range = type == SD_BUS_TYPE_STRUCT && (strcmp(contents, "tt") == 0 || strcmp(contents, "ttt") == 0);
                static const char * const range_keys[] = { "first", "last", "granule" };
                json_object *o = NULL;

                r = sd_bus_message_enter_container(m, type, contents);
                if (r < 0)
                        return r;
                if (type == SD_BUS_TYPE_VARIANT)
                        r = read_json(m, &o);
                else {
                        o = dict || range ? json_object_new_object() : json_object_new_array();
                        for (size_t i = 0; (r = sd_bus_message_at_end(m, false)) == 0; i++) {
                                json_object *v = NULL, *key = NULL;

                                if (dict) {
                                        /* {key value}: the key's text names the member. */
                                        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, NULL);
                                        if (r >= 0)
                                                r = read_json(m, &key);
                                        if (r >= 0)
                                                r = read_json(m, &v);
                                        if (r >= 0)
                                                r = sd_bus_message_exit_container(m);
                                        if (r >= 0)
                                                json_object_object_add(o, json_object_get_string(key) ?: "", v);
                                        else
                                                json_object_put(v);
                                        json_object_put(key);
                                } else {
                                        r = read_json(m, &v);
                                        if (r >= 0 && range)
                                                json_object_object_add(o, range_keys[i], v);
                                        else if (r >= 0)
                                                json_object_array_add(o, v);
                                }
                                if (r < 0)
                                        break;
                        }
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
                if (r < 0) {
                        json_object_put(o);
                        return r;
                }
                *ret = o;
                return 0;
        }

        union { int b; uint8_t y; int16_t n; uint16_t q; int32_t i; uint32_t u; int64_t x; uint64_t t; double d;
                const char *s; } v;
        r = sd_bus_message_read_basic(m, type, &v);
        if (r < 0)
                return r;
        switch (type) {
        case SD_BUS_TYPE_BOOLEAN: *ret = json_object_new_boolean(v.b); break;
        case SD_BUS_TYPE_BYTE:    *ret = json_object_new_int64(v.y); break;
        case SD_BUS_TYPE_INT16:   *ret = json_object_new_int64(v.n); break;
        case SD_BUS_TYPE_UINT16:  *ret = json_object_new_int64(v.q); break;
        case SD_BUS_TYPE_INT32:   *ret = json_object_new_int64(v.i); break;
        case SD_BUS_TYPE_UINT32:  *ret = json_object_new_int64(v.u); break;
        case SD_BUS_TYPE_INT64:   *ret = json_object_new_int64(v.x); break;
        case SD_BUS_TYPE_UINT64:  *ret = json_u64(v.t); break;
        case SD_BUS_TYPE_DOUBLE:  *ret = json_object_new_double(v.d); break;
        case SD_BUS_TYPE_UNIX_FD: *ret = NULL; break; /* an fd means nothing to a reader */
        default:                  *ret = json_object_new_string(v.s); break; /* s, o, g */
        }
        return 0;
}

/* The human form of a property value: numbers and names as they are, lists comma-separated ("-" when
 * empty), ranges as [first,last] or [first,last]/granule in hex; no spaces, so "name=value" stays one word. */
static void print_human(json_object *v) {
        size_t n;

        switch (json_object_get_type(v)) {
        case json_type_array:
                n = json_object_array_length(v);
                if (n == 0) {
                        fputs("-", stdout);
                        break;
                }
                for (size_t i = 0; i < n; i++) {
                        json_object *e = json_object_array_get_idx(v, i), *first, *last, *granule;
                        if (json_object_object_get_ex(e, "first", &first) && json_object_object_get_ex(e, "last", &last)) {
                                printf("%s[0x%" PRIx64 ",0x%" PRIx64 "]", i ? "," : "", json_object_get_uint64(first),
                                       json_object_get_uint64(last));
                                if (json_object_object_get_ex(e, "granule", &granule))
                                        printf("/0x%" PRIx64, json_object_get_uint64(granule));
                        } else {
                                printf("%s", i ? "," : "");
                                print_human(e);
                        }
                }
                break;
        case json_type_null:
                fputs("-", stdout);
                break;
        case json_type_string:
                fputs(json_object_get_string(v), stdout);
                break;
        default:
                fputs(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE), stdout);
        }
}

static void print_json_line(json_object *o) {
        /* One line each, keys in a fixed order (event, path, interface, changes) and no spaces, so that a
         * line-oriented tool can match on it (vfio-brokerctl(1), EXAMPLES). */
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
}

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *member = sd_bus_message_get_member(m), *path = sd_bus_message_get_path(m), *iface;
        json_object *o = NULL, *changes = NULL;

        if (strcmp(member, "PropertiesChanged") == 0) {
                if (sd_bus_message_read(m, "s", &iface) < 0 || read_json(m, &changes) < 0)
                        return 0;
                if (arg_json) {
                        o = json_object_new_object();
                        json_object_object_add(o, "event", json_object_new_string("changed"));
                        json_object_object_add(o, "path", json_object_new_string(path));
                        json_object_object_add(o, "interface", json_object_new_string(iface));
                        json_object_object_add(o, "changes", changes);
                        print_json_line(o);
                } else {
                        printf("changed %s", path);
                        json_object_object_foreach(changes, name, value) {
                                printf(" %s=", name);
                                print_human(value);
                        }
                        printf("\n");
                        json_object_put(changes);
                }
        } else {
                const char *object;
                bool added = strcmp(member, "InterfacesAdded") == 0;
                if (sd_bus_message_read(m, "o", &object) < 0)
                        return 0;
                if (arg_json) {
                        o = json_object_new_object();
                        json_object_object_add(o, "event", json_object_new_string(added ? "added" : "removed"));
                        json_object_object_add(o, "path", json_object_new_string(object));
                        print_json_line(o);
                } else
                        printf("%s %s\n", added ? "added" : "removed", object);
        }
        fflush(stdout);
        return 0;
}

/* The reader of our output went away (`... | grep -m1 ...` found its line): stop, as a pipeline's
 * writer should, instead of lingering until the next change raises SIGPIPE. */
static int on_stdout_closed(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), EXIT_OK);
}

static int cmd_monitor(vfio_broker *b, int argc, char **argv) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        sd_bus *bus = vfio_broker_get_bus(b);
        sigset_t mask;
        int r;

        r = sd_event_default(&event);
        if (r < 0)
                return EXIT_ERROR;
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        (void) sd_event_add_signal(event, NULL, SIGINT, NULL, NULL);
        (void) sd_event_add_signal(event, NULL, SIGTERM, NULL, NULL);

        r = sd_bus_match_signal(bus, NULL, BROKER_BUS_NAME, NULL, "org.freedesktop.DBus.Properties",
                                "PropertiesChanged", on_signal, NULL);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, BROKER_BUS_NAME, BROKER_OBJECT_PATH,
                                        "org.freedesktop.DBus.ObjectManager", "InterfacesAdded", on_signal, NULL);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, BROKER_BUS_NAME, BROKER_OBJECT_PATH,
                                        "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved", on_signal, NULL);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot subscribe: %s\n", strerror(-r));
                return EXIT_UNAVAILABLE;
        }
        /* Subscribed first, so nothing is missed: a broker that starts later is followed from its start,
         * but whoever watches should know why nothing comes. */
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int running = 1;
        if (sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "NameHasOwner", NULL, &reply, "s", BROKER_BUS_NAME) >= 0 &&
            sd_bus_message_read(reply, "b", &running) >= 0 && !running)
                fprintf(stderr, "vfio-brokerctl: vfio-brokerd is not running; waiting for it (start it with: "
                        "systemctl start vfio-brokerd).\n");
        r = vfio_broker_attach_event(b, event, 0);
        if (r < 0)
                return EXIT_ERROR;
        /* No events asked for: epoll still reports EPOLLERR (pipe reader gone) and EPOLLHUP (terminal hung
         * up). Files and /dev/null cannot be polled and need no watching, so a failure here is fine. */
        (void) sd_event_add_io(event, NULL, STDOUT_FILENO, 0, on_stdout_closed, NULL);
        if (!arg_json) {
                printf("Monitoring org.vfiobroker.Broker1; Ctrl-C to stop.\n");
                fflush(stdout);
        }
        r = sd_event_loop(event);
        return r < 0 ? EXIT_ERROR : EXIT_OK;
}


static void help(FILE *f);

/* --- run: an unmodified VMM with a brokered device over vfio-user ------------------------------- */

/* Binds a listening socket at path. A socket file nobody listens on any more (a run that was killed)
 * is replaced; anything else at path is left alone and refused. */
static int listen_at(const char *path, int *ret_fd) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path));
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                if (errno != EADDRINUSE || lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
                        return -errno;
                _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (probe < 0)
                        return -errno;
                if (connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0 || errno != ECONNREFUSED)
                        return -EADDRINUSE; /* somebody serves there */
                if (unlink(path) < 0 || bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                        return -errno;
        }
        if (listen(fd, 1) < 0) {
                int error = -errno;
                (void) unlink(path);
                return error;
        }
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* Runs argv with the signals it would have had; returns its exit status as a shell reports it, and
 * forwards SIGINT, SIGTERM and SIGHUP to it meanwhile, so that stopping the run stops the VMM first. */
static int run_vmm(char **argv) {
        sigset_t mask, old;
        pid_t pid;

        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        if (sigprocmask(SIG_BLOCK, &mask, &old) < 0)
                return -errno;

        pid_t parent = getpid();
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                (void) sigprocmask(SIG_SETMASK, &old, NULL);
                /* If the run dies without forwarding anything (SIGKILL, a crash), its container closes
                 * with its bus connection: the VMM would keep a device without mappings. It gets the
                 * SIGTERM a stop would have sent it. */
                if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                        _exit(128 + SIGTERM);
                execvp(argv[0], argv);
                fprintf(stderr, "vfio-brokerctl: cannot run %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }

        for (;;) {
                siginfo_t si;
                int status;

                if (sigwaitinfo(&mask, &si) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (si.si_signo != SIGCHLD) {
                        (void) kill(pid, si.si_signo);
                        continue;
                }
                if (waitpid(pid, &status, WNOHANG) != pid)
                        continue;
                (void) sigprocmask(SIG_SETMASK, &old, NULL);
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
}

static int group_of_device(vfio_broker *b, const char *device, uint32_t *ret) {
        vfio_broker_group *groups = NULL;
        size_t n = 0;
        int r;

        r = vfio_broker_list_groups(b, &groups, &n);
        if (r < 0)
                return r;
        r = -ENODEV;
        for (size_t i = 0; i < n && r < 0; i++)
                for (char **d = groups[i].devices; d && *d; d++)
                        if (strcmp(*d, device) == 0) {
                                *ret = groups[i].id;
                                r = 0;
                        }
        vfio_broker_groups_free(groups, n);
        return r;
}

static int run_main(int argc, char **argv) {
        static const struct option options[] = {
                { "device", required_argument, NULL, 'd' },
                { "socket", required_argument, NULL, 's' },
                { "label",  required_argument, NULL, 'l' },
                { "help",   no_argument,       NULL, 'h' },
                {}
        };
        const char *device = NULL, *socket_path = NULL, *label = NULL;
        vfio_broker *b = NULL;
        vfio_broker_container *container = NULL;
        _cleanup_close_ int listener = -EBADF;
        uint32_t group = 0;
        int c, r, status;

        /* "+": the VMM's command line starts at the first word that is not ours; "--" is allowed. */
        optind = 1;
        while ((c = getopt_long(argc, argv, "+d:s:l:h", options, NULL)) >= 0)
                switch (c) {
                case 'd':
                        device = optarg;
                        break;
                case 's':
                        socket_path = optarg;
                        break;
                case 'l':
                        label = optarg;
                        break;
                case 'h':
                        help(stdout);
                        return EXIT_OK;
                default:
                        fprintf(stderr, "See \"vfio-brokerctl help\".\n");
                        return EXIT_USAGE;
                }
        if (!device || !socket_path || optind >= argc) {
                fprintf(stderr, "vfio-brokerctl: run needs --device DEVICE, --socket PATH and the VMM's command "
                        "line after them (run --device 0000:01:00.0 --socket /run/user/1000/vm.sock -- "
                        "qemu-system-x86_64 ...).\n");
                return EXIT_USAGE;
        }
        char **vmm = argv + optind;

        r = vfio_broker_open(&b);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot connect to the system bus: %s\n", strerror(-r));
                return EXIT_UNAVAILABLE;
        }
        r = group_of_device(b, device, &group);
        if (r == -ENODEV) {
                fprintf(stderr, "vfio-brokerctl: there is no device %s in any VFIO group the broker serves (see "
                        "\"vfio-brokerctl groups\").\n", device);
                status = EXIT_ERROR;
                goto finish;
        }
        if (r < 0) {
                status = exit_for(b, r, "Cannot list the VFIO groups");
                goto finish;
        }
        r = vfio_broker_container_new(b, label ?: basename(vmm[0]), &container);
        if (r < 0) {
                status = exit_for(b, r, "Cannot create a container");
                goto finish;
        }
        r = vfio_broker_container_attach_group(container, group);
        if (r < 0) {
                status = exit_for(b, r, "Cannot attach the device's VFIO group");
                goto finish;
        }
        r = listen_at(socket_path, &listener);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot listen on %s: %s\n", socket_path, strerror(-r));
                status = EXIT_ERROR;
                goto finish;
        }
        r = vfio_broker_container_serve_vfio_user(container, device, listener);
        if (r < 0) {
                status = exit_for(b, r, "Cannot serve the device");
                (void) unlink(socket_path);
                goto finish;
        }
        /* The broker has its own copy; ours would only keep the socket open after the container ends. */
        listener = safe_close(listener);

        fprintf(stderr, "vfio-brokerctl: serving %s (VFIO group %" PRIu32 ") on %s for %s, container %s.\n",
                device, group, socket_path, vmm[0], vfio_broker_container_get_path(container));
        r = run_vmm(vmm);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot run %s: %s\n", vmm[0], strerror(-r));
                status = EXIT_ERROR;
        } else
                status = r;
        (void) unlink(socket_path);

finish:
        /* Closing the container (which frees our handle) stops serving and releases every mapping the
         * VMM made, before we exit. */
        if (container && vfio_broker_container_close(TAKE_PTR(container)) < 0)
                fprintf(stderr, "vfio-brokerctl: cannot close the container: %s\n", vfio_broker_error_message(b));
        vfio_broker_unref(b);
        return status;
}

static void help(FILE *f) {
        fprintf(f, "Usage: vfio-brokerctl [OPTIONS] COMMAND [ARGS]\n\n"
               "Inspect and administer vfio-brokerd (org.vfiobroker.Broker1).\n\n"
               "Commands:\n"
               "  status            Backend, version and balloon state\n"
               "  groups            VFIO groups: devices, viability, container\n"
               "  list              Containers: owner, uid, label, groups, mappings, bytes\n"
               "  show ID|PATH      One container in detail\n"
               "  monitor           Stream balloon and container changes until interrupted\n"
               "  close ID|PATH     Close a container (administrators)\n"
               "  run --device DEVICE --socket PATH [--label LABEL] -- VMM [ARGS...]\n"
               "                    Serve DEVICE over vfio-user on PATH for an unmodified VMM, run it,\n"
               "                    and hold the container for its lifetime (exit status: the VMM's)\n"
               "  help              Show this help\n\n"
               "Options (before or after the command):\n"
               "  -j --json         Machine-readable output (one JSON document; JSON lines for monitor)\n"
               "  -h --help         Show this help\n"
               "     --version      Show the version\n\n"
               "Exit status: 0 success, 1 refused or failed, 2 usage, 3 broker unavailable,\n"
               "4 no such container, 5 not authorized. See vfio-brokerctl(1).\n");
}

static int cmd_help(vfio_broker *b, int argc, char **argv) {
        help(stdout);
        return EXIT_OK;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "json",    no_argument, NULL, 'j' },
                { "help",    no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {}
        };
        static const struct {
                const char *name;
                int (*run)(vfio_broker *b, int argc, char **argv);
                int n_args;             /* words after the command */
                const char *args;       /* what they are, for the usage error */
        } commands[] = {
                { "status",  cmd_status,  0 },
                { "groups",  cmd_groups,  0 },
                { "list",    cmd_list,    0 },
                { "show",    cmd_show,    1, "one container id or object path" },
                { "monitor", cmd_monitor, 0 },
                { "close",   cmd_close,   1, "one container id or object path" },
                { "help",    cmd_help,    0 },
        };
        _cleanup_free_ char **words = NULL;
        size_t n_words = 0;
        vfio_broker *b = NULL;
        int c, r;

        /* run has options of its own, and everything after them is the VMM's: it parses its words
         * itself. Global options may come before it. */
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-j") == 0 || strcmp(argv[i], "--json") == 0)
                        continue;
                if (strcmp(argv[i], "run") == 0)
                        return run_main(argc - i, argv + i);
                break;
        }

        /* Options may come before or after the command, as in systemctl and busctl: a leading '-' makes
         * getopt hand over each other word in order (code 1) instead of stopping at the first one, whatever
         * POSIXLY_CORRECT says. Everything after "--" is a word too. */
        words = calloc(argc + 1, sizeof(char *));
        if (!words)
                return EXIT_ERROR;
        while ((c = getopt_long(argc, argv, "-jh", options, NULL)) >= 0)
                switch (c) {
                case 1:
                        words[n_words++] = optarg;
                        break;
                case 'j':
                        arg_json = true;
                        break;
                case 'h':
                        help(stdout);
                        return EXIT_OK;
                case 'V':
                        printf("vfio-brokerctl " VERSION "\n");
                        return EXIT_OK;
                default:
                        /* getopt said what was wrong ("unrecognized option '--jsn'"). */
                        fprintf(stderr, "See \"vfio-brokerctl help\".\n");
                        return EXIT_USAGE;
                }
        while (optind < argc)
                words[n_words++] = argv[optind++];
        if (n_words == 0) {
                fprintf(stderr, "vfio-brokerctl: no command given.\n\n");
                help(stderr);
                return EXIT_USAGE;
        }

        for (size_t i = 0; i < ELEMENTSOF(commands); i++) {
                if (strcmp(words[0], commands[i].name) != 0)
                        continue;
                /* Refused before anything is asked of the broker: a word the command does not take is a
                 * mistake (a misspelt option, a second id), not something to ignore. */
                if (n_words - 1 != (size_t) commands[i].n_args) {
                        if (commands[i].n_args == 0)
                                fprintf(stderr, "vfio-brokerctl: %s takes no arguments, got \"%s\"; see "
                                        "\"vfio-brokerctl help\".\n", words[0], words[1]);
                        else
                                fprintf(stderr, "vfio-brokerctl: %s takes %s, got %zu arguments.\n", words[0],
                                        commands[i].args, n_words - 1);
                        return EXIT_USAGE;
                }
                if (commands[i].run == cmd_help)
                        return cmd_help(NULL, 0, NULL);
                r = vfio_broker_open(&b);
                if (r < 0) {
                        const char *address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
                        fprintf(stderr, "vfio-brokerctl: cannot connect to the system bus (%s): %s\n",
                                address ?: "unix:path=/run/dbus/system_bus_socket", strerror(-r));
                        return EXIT_UNAVAILABLE;
                }
                r = commands[i].run(b, (int) n_words, words);
                vfio_broker_unref(b);
                return r;
        }
        fprintf(stderr, "vfio-brokerctl: unknown command \"%s\"; see \"vfio-brokerctl help\".\n", words[0]);
        return EXIT_USAGE;
}
