/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* monitor: one line (or one JSON object per line) per change, until SIGINT/SIGTERM or until whoever
 * reads the output goes away. */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "broker-wire.h"
#include "macro.h"
#include "vfio-brokerctl-private.h"

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

int cmd_monitor(vfio_broker *b, int argc, char **argv) {
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
