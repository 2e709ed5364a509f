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

static int exit_for(vfio_broker *b, int r, const char *what) {
        const char *name = vfio_broker_error_name(b);
        const char *message = vfio_broker_error_message(b);

        fprintf(stderr, "vfio-brokerctl: %s: %s\n", what, message && *message ? message : strerror(-r));
        if (strstr(name, "UnknownObject"))
                return EXIT_NOT_FOUND;
        if (strstr(name, "ServiceUnknown") || strstr(name, "NameHasNoOwner") || (!*name && r == -ECONNREFUSED))
                return EXIT_UNAVAILABLE;
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

static char *format_bytes(uint64_t b, char *buf, size_t size) {
        static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
        size_t u = 0;
        double v = (double) b;
        while (v >= 1024 && u + 1 < ELEMENTSOF(units)) {
                v /= 1024;
                u++;
        }
        if (u == 0)
                snprintf(buf, size, "%" PRIu64 " B", b);
        else
                snprintf(buf, size, "%.1f %s", v, units[u]);
        return buf;
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

        if (argc != 2) {
                fprintf(stderr, "vfio-brokerctl: show takes one container id or object path.\n");
                return EXIT_USAGE;
        }
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
        }
        vfio_broker_container_info_clear(&c);
        return EXIT_OK;
}

static int cmd_close(vfio_broker *b, int argc, char **argv) {
        int r;

        if (argc != 2) {
                fprintf(stderr, "vfio-brokerctl: close takes one container id or object path.\n");
                return EXIT_USAGE;
        }
        r = vfio_broker_close_container(b, argv[1]);
        if (r < 0)
                return exit_for(b, r, "Cannot close the container");
        if (!arg_json)
                printf("Closed %s.\n", argv[1]);
        return EXIT_OK;
}

/* monitor: one line (or one JSON object per line) per change, until SIGINT/SIGTERM. */
static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *member = sd_bus_message_get_member(m), *path = sd_bus_message_get_path(m), *iface, *name;
        json_object *o = NULL, *changes = NULL;

        if (strcmp(member, "PropertiesChanged") == 0) {
                if (sd_bus_message_read(m, "s", &iface) < 0 || sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                        return 0;
                if (arg_json) {
                        o = json_object_new_object();
                        changes = json_object_new_object();
                        json_object_object_add(o, "event", json_object_new_string("changed"));
                        json_object_object_add(o, "path", json_object_new_string(path));
                        json_object_object_add(o, "interface", json_object_new_string(iface));
                } else
                        printf("changed %s", path);
                while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                        char type;
                        const char *contents;
                        if (sd_bus_message_read(m, "s", &name) < 0 || sd_bus_message_peek_type(m, &type, &contents) < 0)
                                return 0;
                        json_object *v = NULL;
                        char text[64] = "?";
                        union { int b; uint32_t u; uint64_t t; const char *s; } val;
                        if (strcmp(contents, "b") == 0 && sd_bus_message_read(m, "v", "b", &val.b) >= 0) {
                                v = json_object_new_boolean(val.b);
                                snprintf(text, sizeof(text), "%s", val.b ? "true" : "false");
                        } else if (strcmp(contents, "u") == 0 && sd_bus_message_read(m, "v", "u", &val.u) >= 0) {
                                v = json_object_new_int64(val.u);
                                snprintf(text, sizeof(text), "%" PRIu32, val.u);
                        } else if (strcmp(contents, "t") == 0 && sd_bus_message_read(m, "v", "t", &val.t) >= 0) {
                                v = json_u64(val.t);
                                snprintf(text, sizeof(text), "%" PRIu64, val.t);
                        } else if (strcmp(contents, "o") == 0 && sd_bus_message_read(m, "v", "o", &val.s) >= 0) {
                                v = json_object_new_string(val.s);
                                snprintf(text, sizeof(text), "%s", val.s);
                        } else if (strcmp(contents, "au") == 0) {
                                const void *p;
                                size_t n;
                                v = json_object_new_array();
                                if (sd_bus_message_enter_container(m, 'v', "au") >= 0 &&
                                    sd_bus_message_read_array(m, 'u', &p, &n) >= 0) {
                                        for (size_t i = 0; i < n / 4; i++)
                                                json_object_array_add(v, json_object_new_int64(((const uint32_t *) p)[i]));
                                        join_u32(p, n / 4, text, sizeof(text));
                                        (void) sd_bus_message_exit_container(m);
                                }
                        } else
                                (void) sd_bus_message_skip(m, "v");
                        if (arg_json)
                                json_object_object_add(changes, name, v);
                        else {
                                json_object_put(v);
                                printf(" %s=%s", name, text);
                        }
                        (void) sd_bus_message_exit_container(m);
                }
                if (arg_json) {
                        json_object_object_add(o, "changes", changes);
                        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                        json_object_put(o);
                } else
                        printf("\n");
        } else {
                const char *object;
                bool added = strcmp(member, "InterfacesAdded") == 0;
                if (sd_bus_message_read(m, "o", &object) < 0)
                        return 0;
                if (arg_json) {
                        o = json_object_new_object();
                        json_object_object_add(o, "event", json_object_new_string(added ? "added" : "removed"));
                        json_object_object_add(o, "path", json_object_new_string(object));
                        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                        json_object_put(o);
                } else
                        printf("%s %s\n", added ? "added" : "removed", object);
        }
        fflush(stdout);
        return 0;
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

        r = sd_bus_match_signal(bus, NULL, "org.vfiobroker.Broker1", NULL, "org.freedesktop.DBus.Properties",
                                "PropertiesChanged", on_signal, NULL);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, "org.vfiobroker.Broker1", "/org/vfiobroker/Broker1",
                                        "org.freedesktop.DBus.ObjectManager", "InterfacesAdded", on_signal, NULL);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, "org.vfiobroker.Broker1", "/org/vfiobroker/Broker1",
                                        "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved", on_signal, NULL);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot subscribe: %s\n", strerror(-r));
                return EXIT_UNAVAILABLE;
        }
        r = vfio_broker_attach_event(b, event, 0);
        if (r < 0)
                return EXIT_ERROR;
        if (!arg_json) {
                printf("Monitoring org.vfiobroker.Broker1; Ctrl-C to stop.\n");
                fflush(stdout);
        }
        r = sd_event_loop(event);
        return r < 0 ? EXIT_ERROR : EXIT_OK;
}

static void help(void) {
        printf("Usage: vfio-brokerctl [--json] COMMAND [ARGS]\n\n"
               "Inspect and administer vfio-brokerd (org.vfiobroker.Broker1).\n\n"
               "Commands:\n"
               "  status            Backend, version and balloon state\n"
               "  groups            VFIO groups: devices, viability, container\n"
               "  list              Containers: owner, uid, label, groups, mappings, bytes\n"
               "  show ID|PATH      One container in detail\n"
               "  monitor           Stream balloon and container changes until interrupted\n"
               "  close ID|PATH     Close a container (administrators)\n\n"
               "Options:\n"
               "  -j --json         Machine-readable output (one JSON document; JSON lines for monitor)\n"
               "  -h --help         Show this help\n"
               "     --version      Show the version\n\n"
               "Exit status: 0 success, 1 refused or failed, 2 usage, 3 broker unavailable,\n"
               "4 no such container, 5 not authorized. See vfio-brokerctl(1).\n");
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
        } commands[] = {
                { "status",  cmd_status  },
                { "groups",  cmd_groups  },
                { "list",    cmd_list    },
                { "show",    cmd_show    },
                { "monitor", cmd_monitor },
                { "close",   cmd_close   },
        };
        vfio_broker *b = NULL;
        int c, r;

        while ((c = getopt_long(argc, argv, "+jh", options, NULL)) >= 0)
                switch (c) {
                case 'j':
                        arg_json = true;
                        break;
                case 'h':
                        help();
                        return EXIT_OK;
                case 'V':
                        printf("vfio-brokerctl " VERSION "\n");
                        return EXIT_OK;
                default:
                        return EXIT_USAGE;
                }
        if (optind >= argc) {
                help();
                return EXIT_USAGE;
        }

        for (size_t i = 0; i < ELEMENTSOF(commands); i++) {
                if (strcmp(argv[optind], commands[i].name) != 0)
                        continue;
                r = vfio_broker_open(&b);
                if (r < 0) {
                        fprintf(stderr, "vfio-brokerctl: cannot connect to the system bus: %s\n", strerror(-r));
                        return EXIT_UNAVAILABLE;
                }
                r = commands[i].run(b, argc - optind, argv + optind);
                vfio_broker_unref(b);
                return r;
        }
        fprintf(stderr, "vfio-brokerctl: unknown command \"%s\"; see --help.\n", argv[optind]);
        return EXIT_USAGE;
}
