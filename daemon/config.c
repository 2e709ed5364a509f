/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"
#include "json-strict.h"

#define KEY_MAX 128

static void sim_config_done(SimConfig *s) {
        for (size_t i = 0; i < s->n_groups; i++)
                strv_free(s->groups[i].devices);
        free(s->groups);
        free(s->iova_ranges);
        *s = (SimConfig) {};
}

static void limit_entries_free(LimitEntry *l, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(l[i].name);
        free(l);
}

BrokerConfig *broker_config_free(BrokerConfig *c) {
        if (!c)
                return NULL;
        sim_config_done(&c->sim);
        limit_entries_free(c->user_limits, c->n_user_limits);
        limit_entries_free(c->group_limits, c->n_group_limits);
        free(c);
        return NULL;
}

static int sim_add_group(SimConfig *s, unsigned id, bool viable, const char *d1, const char *d2) {
        SimGroupConfig *a = realloc(s->groups, (s->n_groups + 1) * sizeof(SimGroupConfig));
        if (!a)
                return -ENOMEM;
        s->groups = a;
        SimGroupConfig *g = &s->groups[s->n_groups];
        *g = (SimGroupConfig) { .id = id, .viable = viable, .devices = calloc(3, sizeof(char *)) };
        if (!g->devices)
                return -ENOMEM;
        s->n_groups++;
        g->devices[0] = strdup(d1);
        if (!g->devices[0])
                return -ENOMEM;
        if (d2) {
                g->devices[1] = strdup(d2);
                if (!g->devices[1])
                        return -ENOMEM;
        }
        return 0;
}

/* Every memory fd costs the daemon one of its RLIMIT_NOFILE fds: a quarter of them per user, so that
 * one user's flood of distinct memfds leaves the rest (and root, which is not limited) served. */
static uint64_t default_fds_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return 65536 / 4;
        return rl.rlim_cur / 4 > 16 ? (uint64_t) rl.rlim_cur / 4 : 16;
}

int broker_config_new_default(BrokerConfig **ret) {
        _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;

        /* Four single-device groups, one two-function device, one group that is not bound to vfio. */
        for (unsigned i = 1; i <= 4; i++) {
                char name[16];
                snprintf(name, sizeof(name), "0000:00:%02x.0", i);
                r = sim_add_group(&c->sim, i, true, name, NULL);
                if (r < 0)
                        return r;
        }
        r = sim_add_group(&c->sim, 5, true, "0000:00:05.0", "0000:00:05.1");
        if (r < 0)
                return r;
        r = sim_add_group(&c->sim, 6, false, "0000:00:06.0", NULL);
        if (r < 0)
                return r;

        /* What an Intel IOMMU with 39-bit addressing reports (QEMU's default vIOMMU): everything but
         * the MSI window 0xfee00000-0xfeefffff. */
        c->sim.iova_ranges = calloc(2, sizeof(IovaRange));
        if (!c->sim.iova_ranges)
                return -ENOMEM;
        c->sim.iova_ranges[0] = (IovaRange) { 0, UINT64_C(0xfedfffff) };
        c->sim.iova_ranges[1] = (IovaRange) { UINT64_C(0xfef00000), UINT64_C(0x7fffffffff) };
        c->sim.n_iova_ranges = 2;
        c->sim.page_sizes = UINT64_C(0x40201000); /* 4K | 2M | 1G */
        c->sim.dma_entry_limit = 65535;           /* vfio_iommu_type1's dma_entry_limit default */

        /* Out of the box, no user may pin more than half of the host's memory, however many VMs it
         * starts; root is not limited unless named in "users" (see quota.c). */
        long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
        c->default_limits = (LimitConfig) {
                .containers = 16,
                .mappings = 65535,
                .pinned_bytes = pages > 0 && page_size > 0 ? (uint64_t) pages * (uint64_t) page_size / 2 : UINT64_MAX,
                .fds = default_fds_limit(),
                /* Mappings reserve windows of their files (1 GiB granules, memory.h) in the daemon's
                 * 128 TiB (47-bit) of address space, whatever is pinned of them: a sixteenth per user. */
                .address_space = UINT64_C(1) << 43,
        };
        c->reserved_fds = UINT64_MAX;

        *ret = TAKE_PTR(c);
        return 0;
}

typedef struct Parser {
        BrokerError *error;
} Parser;

static int fail(Parser *p, const char *path, const char *format, ...) _printf_(3, 4);
static int fail(Parser *p, const char *path, const char *format, ...) {
        char what[200];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(what, sizeof(what), format, ap);
        va_end(ap);
        return broker_error_set(p->error, BROKER_ERROR_INVALID_ARGS, "%s: %s", path, what);
}

/* 64-bit values: a non-negative JSON integer, or a string in decimal or 0x-hex (JSON numbers above
 * 2^63 do not survive most JSON tools). */
static int parse_u64(Parser *p, const char *path, json_object *o, uint64_t *ret) {
        if (json_object_is_type(o, json_type_int)) {
                int64_t v = json_object_get_int64(o);
                if (v < 0 || (v == INT64_MAX && errno == ERANGE))
                        return fail(p, path, "expected a non-negative integer");
                *ret = (uint64_t) v;
                return 0;
        }
        if (json_object_is_type(o, json_type_string)) {
                const char *s = json_object_get_string(o);
                char *end;
                if (s[0] == '-' || s[0] == 0)
                        return fail(p, path, "expected a non-negative integer");
                errno = 0;
                unsigned long long v = strtoull(s, &end, 0);
                if (errno != 0 || *end != 0)
                        return fail(p, path, "\"%s\" is not an integer (decimal or 0x-hex)", s);
                *ret = v;
                return 0;
        }
        return fail(p, path, "expected an integer or a string holding one");
}

static int check_keys(Parser *p, const char *path, json_object *o, const char * const *allowed) {
        json_object_object_foreach(o, key, value) {
                bool ok = false;
                (void) value;
                for (const char * const *a = allowed; *a && !ok; a++)
                        ok = strcmp(*a, key) == 0;
                if (!ok)
                        return fail(p, path, "unknown key \"%s\"", key);
        }
        return 0;
}

static int expect_type(Parser *p, const char *path, json_object *o, json_type type, const char *what) {
        if (!json_object_is_type(o, type))
                return fail(p, path, "expected %s", what);
        return 0;
}

static bool device_name_valid(const char *s) {
        return s[0] != 0 && strlen(s) < 64 && !strchr(s, '/') && !strchr(s, ',');
}

static int parse_sim_groups(Parser *p, json_object *a, SimConfig *s) {
        size_t n;
        int r;

        r = expect_type(p, "sim.groups", a, json_type_array, "an array");
        if (r < 0)
                return r;

        /* Replaces the default topology as a whole. */
        for (size_t i = 0; i < s->n_groups; i++)
                strv_free(s->groups[i].devices);
        free(s->groups);
        s->groups = NULL;
        s->n_groups = 0;

        n = json_object_array_length(a);
        s->groups = calloc(n ? n : 1, sizeof(SimGroupConfig));
        if (!s->groups)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                json_object *g = json_object_array_get_idx(a, i), *v;
                SimGroupConfig *sg = &s->groups[i];
                char path[KEY_MAX];
                uint64_t id;

                snprintf(path, sizeof(path), "sim.groups[%zu]", i);
                r = expect_type(p, path, g, json_type_object, "an object");
                if (r < 0)
                        return r;
                r = check_keys(p, path, g, (const char * const[]) { "id", "devices", "viable", NULL });
                if (r < 0)
                        return r;

                *sg = (SimGroupConfig) { .viable = true };
                s->n_groups++;

                snprintf(path, sizeof(path), "sim.groups[%zu].id", i);
                if (!json_object_object_get_ex(g, "id", &v))
                        return fail(p, path, "missing");
                r = parse_u64(p, path, v, &id);
                if (r < 0)
                        return r;
                if (id > UINT32_MAX)
                        return fail(p, path, "group ids are 32-bit");
                sg->id = (unsigned) id;
                for (size_t j = 0; j < i; j++)
                        if (s->groups[j].id == sg->id)
                                return fail(p, path, "group %u is listed twice", sg->id);

                snprintf(path, sizeof(path), "sim.groups[%zu].viable", i);
                if (json_object_object_get_ex(g, "viable", &v)) {
                        r = expect_type(p, path, v, json_type_boolean, "a boolean");
                        if (r < 0)
                                return r;
                        sg->viable = json_object_get_boolean(v);
                }

                snprintf(path, sizeof(path), "sim.groups[%zu].devices", i);
                if (!json_object_object_get_ex(g, "devices", &v))
                        return fail(p, path, "missing");
                r = expect_type(p, path, v, json_type_array, "an array of device names");
                if (r < 0)
                        return r;
                size_t nd = json_object_array_length(v);
                if (nd == 0)
                        return fail(p, path, "a group has at least one device");
                sg->devices = calloc(nd + 1, sizeof(char *));
                if (!sg->devices)
                        return -ENOMEM;
                for (size_t j = 0; j < nd; j++) {
                        json_object *d = json_object_array_get_idx(v, j);
                        char dpath[KEY_MAX];

                        snprintf(dpath, sizeof(dpath), "sim.groups[%zu].devices[%zu]", i, j);
                        r = expect_type(p, dpath, d, json_type_string, "a device name string");
                        if (r < 0)
                                return r;
                        if (!device_name_valid(json_object_get_string(d)))
                                return fail(p, dpath, "\"%s\" is not a valid device name",
                                            json_object_get_string(d));
                        for (size_t k = 0; k <= i; k++)
                                for (char **e = s->groups[k].devices; e && *e; e++)
                                        if (strcmp(*e, json_object_get_string(d)) == 0)
                                                return fail(p, dpath, "device %s is listed twice", *e);
                        sg->devices[j] = strdup(json_object_get_string(d));
                        if (!sg->devices[j])
                                return -ENOMEM;
                }
        }
        return 0;
}

static int parse_sim_ranges(Parser *p, json_object *a, SimConfig *s) {
        size_t n;
        int r;

        r = expect_type(p, "sim.iova_ranges", a, json_type_array, "an array");
        if (r < 0)
                return r;
        n = json_object_array_length(a);
        if (n == 0)
                return fail(p, "sim.iova_ranges", "at least one range is needed");

        free(s->iova_ranges);
        s->n_iova_ranges = 0;
        s->iova_ranges = calloc(n, sizeof(IovaRange));
        if (!s->iova_ranges)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_array_get_idx(a, i), *v;
                char path[KEY_MAX / 2], kpath[KEY_MAX];
                IovaRange *ir = &s->iova_ranges[i];

                snprintf(path, sizeof(path), "sim.iova_ranges[%zu]", i);
                r = expect_type(p, path, o, json_type_object, "an object with \"first\" and \"last\"");
                if (r < 0)
                        return r;
                r = check_keys(p, path, o, (const char * const[]) { "first", "last", NULL });
                if (r < 0)
                        return r;
                snprintf(kpath, sizeof(kpath), "%s.first", path);
                if (!json_object_object_get_ex(o, "first", &v))
                        return fail(p, kpath, "missing");
                r = parse_u64(p, kpath, v, &ir->first);
                if (r < 0)
                        return r;
                snprintf(kpath, sizeof(kpath), "%s.last", path);
                if (!json_object_object_get_ex(o, "last", &v))
                        return fail(p, kpath, "missing");
                r = parse_u64(p, kpath, v, &ir->last);
                if (r < 0)
                        return r;
                if (ir->first > ir->last)
                        return fail(p, path, "first is above last");
                if (i > 0 && ir->first <= s->iova_ranges[i - 1].last)
                        return fail(p, path, "ranges must be sorted and must not overlap");
                s->n_iova_ranges++;
        }
        return 0;
}

static int parse_sim(Parser *p, json_object *o, SimConfig *s) {
        json_object *v;
        uint64_t u;
        int r;

        r = expect_type(p, "sim", o, json_type_object, "an object");
        if (r < 0)
                return r;
        r = check_keys(p, "sim", o, (const char * const[]) { "groups", "iova_ranges", "page_sizes",
                                                             "dma_entry_limit", NULL });
        if (r < 0)
                return r;

        if (json_object_object_get_ex(o, "groups", &v)) {
                r = parse_sim_groups(p, v, s);
                if (r < 0)
                        return r;
        }
        if (json_object_object_get_ex(o, "iova_ranges", &v)) {
                r = parse_sim_ranges(p, v, s);
                if (r < 0)
                        return r;
        }
        if (json_object_object_get_ex(o, "page_sizes", &v)) {
                r = parse_u64(p, "sim.page_sizes", v, &u);
                if (r < 0)
                        return r;
                if (u == 0 || (u & (UINT64_C(4096) - 1)))
                        return fail(p, "sim.page_sizes", "a bitmap of page sizes of 4 KiB and up is needed");
                s->page_sizes = u;
        }
        if (json_object_object_get_ex(o, "dma_entry_limit", &v)) {
                r = parse_u64(p, "sim.dma_entry_limit", v, &u);
                if (r < 0)
                        return r;
                if (u == 0 || u >= UINT32_MAX)
                        return fail(p, "sim.dma_entry_limit", "must be between 1 and %" PRIu32, UINT32_MAX - 1);
                s->dma_entry_limit = (uint32_t) u;
        }
        return 0;
}

static int parse_limit(Parser *p, const char *path, json_object *o, LimitConfig *l) {
        static const char * const keys[] = { "containers", "mappings", "pinned_bytes", "fds", "address_space",
                                             NULL };
        uint64_t *fields[] = { &l->containers, &l->mappings, &l->pinned_bytes, &l->fds, &l->address_space };
        int r;

        r = expect_type(p, path, o, json_type_object, "an object");
        if (r < 0)
                return r;
        r = check_keys(p, path, o, keys);
        if (r < 0)
                return r;
        for (size_t i = 0; keys[i]; i++) {
                json_object *v;
                char kpath[KEY_MAX * 2];

                if (!json_object_object_get_ex(o, keys[i], &v))
                        continue;
                snprintf(kpath, sizeof(kpath), "%s.%s", path, keys[i]);
                /* "unlimited" reads better than 18446744073709551615. */
                if (json_object_is_type(v, json_type_string) && strcmp(json_object_get_string(v), "unlimited") == 0) {
                        *fields[i] = UINT64_MAX;
                        continue;
                }
                r = parse_u64(p, kpath, v, fields[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int parse_limit_map(Parser *p, const char *path, json_object *o, const LimitConfig *base,
                           LimitEntry **ret, size_t *ret_n) {
        size_t n = 0;
        int r;

        r = expect_type(p, path, o, json_type_object, "an object mapping names to limits");
        if (r < 0)
                return r;

        limit_entries_free(*ret, *ret_n);
        *ret = calloc(json_object_object_length(o) + 1, sizeof(LimitEntry));
        *ret_n = 0;
        if (!*ret)
                return -ENOMEM;

        json_object_object_foreach(o, key, value) {
                char kpath[KEY_MAX];

                snprintf(kpath, sizeof(kpath), "%s.%s", path, key);
                if (key[0] == 0 || strlen(key) > 64)
                        return fail(p, kpath, "not a valid user or group name");
                /* Unset fields inherit the defaults. */
                (*ret)[n].limits = *base;
                (*ret)[n].name = strdup(key);
                if (!(*ret)[n].name)
                        return -ENOMEM;
                *ret_n = ++n;
                r = parse_limit(p, kpath, value, &(*ret)[n - 1].limits);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int parse_limits(Parser *p, json_object *o, BrokerConfig *c) {
        json_object *v;
        int r;

        r = expect_type(p, "limits", o, json_type_object, "an object");
        if (r < 0)
                return r;
        r = check_keys(p, "limits", o, (const char * const[]) { "default", "users", "groups", "reserved_fds",
                                                                 NULL });
        if (r < 0)
                return r;
        if (json_object_object_get_ex(o, "default", &v)) {
                r = parse_limit(p, "limits.default", v, &c->default_limits);
                if (r < 0)
                        return r;
        }
        if (json_object_object_get_ex(o, "users", &v)) {
                r = parse_limit_map(p, "limits.users", v, &c->default_limits, &c->user_limits, &c->n_user_limits);
                if (r < 0)
                        return r;
        }
        if (json_object_object_get_ex(o, "groups", &v)) {
                r = parse_limit_map(p, "limits.groups", v, &c->default_limits, &c->group_limits,
                                    &c->n_group_limits);
                if (r < 0)
                        return r;
        }
        if (json_object_object_get_ex(o, "reserved_fds", &v)) {
                r = parse_u64(p, "limits.reserved_fds", v, &c->reserved_fds);
                if (r < 0)
                        return r;
                /* UINT64_MAX stands for the default. */
                if (c->reserved_fds == UINT64_MAX)
                        c->reserved_fds--;
        }
        return 0;
}

int broker_config_parse(const char *text, BrokerConfig **ret, BrokerError *e) {
        _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
        json_object *root, *v;
        Parser p = { .error = e };
        int r;

        assert(text);
        assert(ret);

        r = broker_config_new_default(&c);
        if (r < 0)
                return r;

        /* Strict: no trailing commas, comments, text after the object or keys given twice, which json-c
         * would otherwise pass over. */
        r = json_parse_strict(text, &root, e);
        if (r < 0)
                return r;
        if (!json_object_is_type(root, json_type_object)) {
                json_object_put(root);
                return fail(&p, "(top level)", "expected an object");
        }
        r = check_keys(&p, "(top level)", root, (const char * const[]) { "sim", "limits", NULL });
        if (r >= 0 && json_object_object_get_ex(root, "sim", &v))
                r = parse_sim(&p, v, &c->sim);
        if (r >= 0 && json_object_object_get_ex(root, "limits", &v))
                r = parse_limits(&p, v, c);
        json_object_put(root);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(c);
        return 0;
}

int broker_config_load(const char *path, bool missing_ok, BrokerConfig **ret, BrokerError *e) {
        _cleanup_free_ char *text = NULL;
        BrokerError inner = BROKER_ERROR_INIT;
        size_t size = 0;
        FILE *f;
        int r;

        assert(path);
        assert(ret);

        f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && missing_ok)
                        return broker_config_new_default(ret); /* 0: nothing read, the defaults */
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "%s: cannot open: %s", path, strerror(errno));
        }
        text = calloc(1, 1024 * 1024 + 1);
        if (!text) {
                fclose(f);
                return -ENOMEM;
        }
        size = fread(text, 1, 1024 * 1024 + 1, f);
        r = ferror(f);
        fclose(f);
        if (r)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "%s: cannot read", path);
        if (size > 1024 * 1024)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "%s: larger than 1 MiB", path);
        text[size] = 0;

        r = broker_config_parse(text, ret, &inner);
        if (r < 0 && broker_error_is_set(&inner))
                return broker_error_set(e, inner.code, "%s: %s", path, inner.message);
        if (r < 0)
                return r;
        return 1;
}
