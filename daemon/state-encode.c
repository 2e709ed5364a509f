/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "state-encode.h"
#include "state-private.h"

#define STATE_GROUPS_MAX 64

void container_state_done(ContainerState *s) {
        free(s->backend);
        free(s->owner);
        free(s->label);
        free(s->groups);
        free(s->regions);
        free(s->discardable);
        free(s->mappings);
        for (size_t i = 0; i < s->n_vfio_user; i++)
                free(s->vfio_user[i].dma);
        free(s->vfio_user);
        *s = (ContainerState) {};

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

static int encode(const Container *c, const char *backend, bool head, FILE *f) {
        json_object *root, *groups, *regions;
        MappingTableNode *node;
        int r;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        json_object_object_add(root, "version", json_object_new_int(STATE_VERSION));
        json_object_object_add(root, "backend", json_object_new_string(backend));
        json_object_object_add(root, "id", json_u64(c->id));
        json_object_object_add(root, "owner", json_object_new_string(c->owner));
        json_object_object_add(root, "uid", json_object_new_int64(c->uid));
        json_object_object_add(root, "label", json_object_new_string(c->label));
        groups = json_object_new_array();
        for (size_t i = 0; i < c->n_groups; i++)
                json_object_array_add(groups, json_object_new_int64(c->groups[i]));
        json_object_object_add(root, "groups", groups);
        regions = head ? NULL : json_object_new_array();
        for (MemoryRegion *m = head ? NULL : memory_pool_first(c->memory); m; m = memory_region_next(m)) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "id", json_object_new_int64(memory_region_id(m)));
                json_object_object_add(o, "flags", json_object_new_int64(memory_region_flags(m)));
                const StoredFile *sf = memory_region_get_data(m);
                if (sf)
                        json_object_object_add(o, "file", json_object_new_string(sf->name));
                json_object_array_add(regions, o);
        }
        if (regions)
                json_object_object_add(root, "regions", regions);
        if (c->dirty_tracking)
                json_object_object_add(root, "dirty_tracking", json_object_new_boolean(true));
        if (mapping_table_size(&c->discardable) > 0) {
                /* [iova, size, region, offset, flags, granule]; their populated granules are mappings. */
                json_object *l = json_object_new_array();
                for (node = mapping_table_first(&c->discardable); node; node = mapping_table_next(node)) {
                        DiscardRegion *d = container_of(node, DiscardRegion, node);
                        const MemoryRegion *region = memory_window_region(d->window);
                        json_object *a = json_object_new_array_ext(6);
                        json_object_array_add(a, json_u64(node->first));
                        json_object_array_add(a, json_u64(mapping_table_node_size(node)));
                        json_object_array_add(a, json_object_new_int64(memory_region_id(region)));
                        json_object_array_add(a, json_u64(d->offset));
                        json_object_array_add(a, json_object_new_int64(d->flags));
                        json_object_array_add(a, json_u64(d->granule));
                        json_object_array_add(l, a);
                }
                json_object_object_add(root, "discardable", l);
        }

        /* The small part through json-c; the mappings, up to 65535 of them, straight to the file:
         * building a json-c tree for them cost more time and memory than everything else a Map does. */
        size_t len;
        const char *text = json_object_to_json_string_length(root, JSON_C_TO_STRING_PLAIN, &len);
        assert(len > 2 && text[len - 1] == '}');
        if (head) {
                r = fwrite(text, 1, len, f) != len || ferror(f) ? -EIO : 0;
                json_object_put(root);
                return r;
        }
        fwrite(text, 1, len - 1, f);
        fputs(",\"mappings\":[", f);
        for (node = mapping_table_first(&c->mappings); node; node = mapping_table_next(node)) {
                Mapping *m = container_of(node, Mapping, node);
                fputs(node == mapping_table_first(&c->mappings) ? "[" : ",[", f);
                fput_u64(f, node->first);
                fputc(',', f);
                fput_u64(f, mapping_table_node_size(node));
                fprintf(f, ",%u,", memory_region_id(memory_window_region(m->window)));
                fput_u64(f, mapping_offset(m));
                fprintf(f, ",%" PRIu32 "]", mapping_flags(m));
        }
        r = fputs("]}", f) < 0 || ferror(f) ? -EIO : 0;
        json_object_put(root);
        return r;
}

int state_encode(const Container *c, const char *backend, FILE *f) {
        return encode(c, backend, false, f);
}

int state_encode_head(const Container *c, const char *backend, FILE *f) {
        return encode(c, backend, true, f);
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

/* One [iova, size, region, offset, flags(, granule)] entry; region is 32-bit, flags READ|WRITE. */
static int parse_entry(json_object *a, bool granule, StateMapping *ret, const char *what, BrokerError *e) {
        size_t n = granule ? 6 : 5;
        uint64_t f[6] = {};

        if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) != n)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed %s", what);
        for (size_t k = 0; k < n; k++)
                if (parse_u64(json_object_array_get_idx(a, k), &f[k]) < 0)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed %s", what);
        if (f[2] > UINT32_MAX || f[4] > 3)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed %s", what);
        *ret = (StateMapping) { .iova = f[0], .size = f[1], .region = (uint32_t) f[2], .offset = f[3],
                                .flags = (uint32_t) f[4], .granule = f[5] };
        return 0;
}

static int parse_entries(json_object *l, bool granule, StateMapping **ret, size_t *ret_n, const char *what,
                         BrokerError *e) {
        size_t n = json_object_array_length(l);
        int r;

        *ret = calloc(n ?: 1, sizeof(StateMapping));
        if (!*ret)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = parse_entry(json_object_array_get_idx(l, i), granule, &(*ret)[i], what, e);
                if (r < 0)
                        return r;
        }
        *ret_n = n;
        return 0;
}

static char *dup_string(json_object *o) {
        return json_object_is_type(o, json_type_string) ? strdup(json_object_get_string(o)) : NULL;
}

static int decode(json_object *root, ContainerState *s, bool head, BrokerError *e) {
        json_object *v, *groups_o, *regions_o = NULL, *mappings_o = NULL;
        uint64_t uid;
        int r;

        if (!json_object_object_get_ex(root, "version", &v) || !json_object_is_type(v, json_type_int) ||
            json_object_get_int(v) != STATE_VERSION)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "state of another version");
        if (!json_object_object_get_ex(root, "backend", &v) || !(s->backend = dup_string(v)) ||
            !json_object_object_get_ex(root, "id", &v) || parse_u64(v, &s->id) < 0 || s->id == 0 ||
            !json_object_object_get_ex(root, "owner", &v) || !(s->owner = dup_string(v)) ||
            !json_object_object_get_ex(root, "uid", &v) || parse_u64(v, &uid) < 0 || uid >= UINT32_MAX ||
            !json_object_object_get_ex(root, "label", &v) || !(s->label = dup_string(v)) ||
            !json_object_object_get_ex(root, "groups", &groups_o) || !json_object_is_type(groups_o, json_type_array) ||
            json_object_array_length(groups_o) > STATE_GROUPS_MAX)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed state");
        /* The head in the state log has neither: they are records of their own. */
        if (head ? json_object_object_get_ex(root, "regions", NULL) || json_object_object_get_ex(root, "mappings", NULL) :
                   !json_object_object_get_ex(root, "regions", &regions_o) ||
                   !json_object_is_type(regions_o, json_type_array) ||
                   !json_object_object_get_ex(root, "mappings", &mappings_o) ||
                   !json_object_is_type(mappings_o, json_type_array))
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed state");
        s->uid = (uid_t) uid;

        s->groups = calloc(json_object_array_length(groups_o) ?: 1, sizeof(unsigned));
        if (!s->groups)
                return -ENOMEM;
        for (size_t i = 0; i < json_object_array_length(groups_o); i++) {
                uint64_t g;
                if (parse_u64(json_object_array_get_idx(groups_o, i), &g) < 0 || g > UINT32_MAX)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed group list");
                for (size_t k = 0; k < s->n_groups; k++)
                        if (s->groups[k] == g)
                                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "group %" PRIu64 " listed twice", g);
                s->groups[s->n_groups++] = (unsigned) g;
        }

        if (head)
                goto tail;

        s->regions = calloc(json_object_array_length(regions_o) ?: 1, sizeof(StateRegion));
        if (!s->regions)
                return -ENOMEM;
        for (size_t i = 0; i < json_object_array_length(regions_o); i++) {
                json_object *o = json_object_array_get_idx(regions_o, i), *ri, *rf, *rn;
                uint64_t id, flags;
                if (!json_object_object_get_ex(o, "id", &ri) || parse_u64(ri, &id) < 0 || id > UINT32_MAX ||
                    !json_object_object_get_ex(o, "flags", &rf) || parse_u64(rf, &flags) < 0 || flags > UINT32_MAX)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed memory region");
                s->regions[s->n_regions] = (StateRegion) { .id = (uint32_t) id, .flags = (uint32_t) flags };
                /* Absent in the state of older daemons, which stored memory per region. */
                if (json_object_object_get_ex(o, "file", &rn)) {
                        const char *name = json_object_get_string(rn);
                        if (!json_object_is_type(rn, json_type_string) || name[0] == 0 ||
                            strlen(name) >= sizeof(s->regions[i].file) || strchr(name, ':') || strchr(name, '\n'))
                                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed memory file name");
                        strcpy(s->regions[s->n_regions].file, name);
                }
                s->n_regions++;
        }

tail:
        if (json_object_object_get_ex(root, "discardable", &v)) {
                if (!json_object_is_type(v, json_type_array))
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "malformed discardable regions");
                r = parse_entries(v, true, &s->discardable, &s->n_discardable, "discardable region", e);
                if (r < 0)
                        return r;
        }
        if (!head) {
                r = parse_entries(mappings_o, false, &s->mappings, &s->n_mappings, "mapping", e);
                if (r < 0)
                        return r;
        }

        s->dirty_tracking = json_object_object_get_ex(root, "dirty_tracking", &v) && json_object_get_boolean(v);
        return 0;
}

static int decode_text(const char *text, bool head, ContainerState *ret, BrokerError *e) {
        ContainerState s = {};
        json_object *root;
        int r;

        root = json_tokener_parse(text);
        if (!root)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "not JSON");
        r = decode(root, &s, head, e);
        json_object_put(root);
        if (r < 0) {
                container_state_done(&s);
                return r;
        }
        *ret = s;
        return 0;
}

int state_decode(const char *text, ContainerState *ret, BrokerError *e) {
        return decode_text(text, false, ret, e);
}

int state_decode_head(const char *text, ContainerState *ret, BrokerError *e) {
        return decode_text(text, true, ret, e);
}
