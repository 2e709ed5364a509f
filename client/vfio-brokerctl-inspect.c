/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vfio-brokerctl status, groups, list, show, close: one request each, answered as a table or as one
 * JSON document. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format-util.h"
#include "vfio-brokerctl-private.h"

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

int cmd_status(vfio_broker *b, int argc, char **argv) {
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

int cmd_groups(vfio_broker *b, int argc, char **argv) {
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

int cmd_list(vfio_broker *b, int argc, char **argv) {
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

int cmd_show(vfio_broker *b, int argc, char **argv) {
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

int cmd_close(vfio_broker *b, int argc, char **argv) {
        int r;

        r = vfio_broker_close_container(b, argv[1]);
        if (r < 0)
                return exit_for(b, r, "Cannot close the container");
        if (!arg_json)
                printf("Closed %s.\n", argv[1]);
        return EXIT_OK;
}
