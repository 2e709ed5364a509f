/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <zlib.h>

#include "state-log.h"

struct StateLog {
        int fd;
        StateLogHeader *header;
        StateRecord *records;
        size_t mapped;
        uint64_t used; /* appended, committed or not */
};

uint32_t state_crc32(const void *data, size_t size) {
        return (uint32_t) crc32(0, data, (uInt) size);
}

/* CRC-32C (Castagnoli) byte by byte, for CPUs without the instruction. */
static uint32_t crc32c_table(const uint8_t *p, size_t size) {
        static uint32_t table[256];
        uint32_t crc = UINT32_MAX;

        if (table[1] == 0)
                for (uint32_t i = 0; i < 256; i++) {
                        uint32_t c = i;
                        for (int k = 0; k < 8; k++)
                                c = c & 1 ? UINT32_C(0x82f63b78) ^ (c >> 1) : c >> 1;
                        table[i] = c;
                }
        while (size--)
                crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
        return crc ^ UINT32_MAX;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(const uint8_t *p, size_t size) {
        uint64_t crc = UINT32_MAX;

        for (; size >= 8; size -= 8, p += 8) {
                uint64_t v;
                memcpy(&v, p, sizeof(v));
                crc = __builtin_ia32_crc32di(crc, v);
        }
        uint32_t c = (uint32_t) crc;
        while (size--)
                c = __builtin_ia32_crc32qi(c, *p++);
        return c ^ UINT32_MAX;
}
#endif

uint32_t state_crc32c(const void *data, size_t size) {
#if defined(__x86_64__)
        if (__builtin_cpu_supports("sse4.2"))
                return crc32c_sse42(data, size);
#endif
        return crc32c_table(data, size);
}

/* The checksum of a record of a log of this version (records are checksummed with their crc field
 * 0). Version 1 logs carry CRC-32 (IEEE), version 2 CRC-32C: one instruction per 8 bytes where the CPU
 * has it (SSE 4.2), where zlib's CRC-32 of a record took 190 ns, a quarter of the daemon's time in an
 * Update. */
static uint32_t record_crc(uint32_t version, const StateRecord *r) {
        StateRecord copy = *r;

        copy.crc = 0;
        return version == 1 ? state_crc32(&copy, sizeof(copy)) : state_crc32c(&copy, sizeof(copy));
}

int state_log_new(uint64_t generation, uint64_t capacity, StateLog **ret) {
        _cleanup_free_ StateLog *l = NULL;
        _cleanup_close_ int fd = -EBADF;
        size_t size = STATE_LOG_HEADER_SIZE + capacity * STATE_LOG_RECORD_SIZE;
        void *p;

        fd = memfd_create("vfio-broker-state", MFD_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t) size) < 0)
                return -errno;
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
        if (p == MAP_FAILED)
                return -errno;
        l = calloc(1, sizeof(*l));
        if (!l) {
                munmap(p, size);
                return -ENOMEM;
        }
        l->header = p;
        l->records = (StateRecord *) ((uint8_t *) p + STATE_LOG_HEADER_SIZE);
        l->mapped = size;
        memcpy(l->header->magic, STATE_LOG_MAGIC, 8);
        l->header->version = STATE_LOG_VERSION;
        l->header->record_size = STATE_LOG_RECORD_SIZE;
        l->header->generation = generation;
        l->header->capacity = capacity;
        l->header->committed = 0;
        l->fd = TAKE_FD(fd);
        *ret = TAKE_PTR(l);
        return 0;
}

StateLog *state_log_free(StateLog *l) {
        if (!l)
                return NULL;
        munmap(l->header, l->mapped);
        safe_close(l->fd);
        free(l);
        return NULL;
}

int state_log_fd(const StateLog *l) {
        return l->fd;
}

uint64_t state_log_generation(const StateLog *l) {
        return l->header->generation;
}

uint64_t state_log_used(const StateLog *l) {
        return l->used;
}

uint64_t state_log_capacity(const StateLog *l) {
        return l->header->capacity;
}

int state_log_append(StateLog *l, StateRecord *r) {
        if (l->used >= l->header->capacity)
                return -ENOSPC;
        r->crc = record_crc(STATE_LOG_VERSION, r);
        l->records[l->used++] = *r;
        return 0;
}

int state_log_append_head(StateLog *l, uint64_t container, const char *json, size_t length) {
        StateRecord r = { .type = STATE_RECORD_HEAD, .container = container, .head.length = length };
        size_t k = length < sizeof(r.head.data) ? length : sizeof(r.head.data);
        int ret;

        /* Whole or not at all: the room for every BLOB first. */
        if (l->used + 1 + (length - k + sizeof(r.blob) - 1) / sizeof(r.blob) > l->header->capacity)
                return -ENOSPC;
        memcpy(r.head.data, json, k);
        ret = state_log_append(l, &r);
        for (size_t off = k; ret >= 0 && off < length; off += sizeof(r.blob)) {
                StateRecord b = { .type = STATE_RECORD_BLOB, .container = container };
                memcpy(b.blob, json + off, length - off < sizeof(b.blob) ? length - off : sizeof(b.blob));
                ret = state_log_append(l, &b);
        }
        return ret;
}

void state_log_commit(StateLog *l) {
        /* The records are in place before the count says so (release); an aligned 64-bit store is
         * not torn by the death of the process. */
        __atomic_store_n(&l->header->committed, l->used, __ATOMIC_RELEASE);
}

bool state_log_dirty(const StateLog *l) {
        return __atomic_load_n(&l->header->committed, __ATOMIC_RELAXED) != l->used;
}

static int check_header(const void *data, size_t size, const StateLogHeader **ret) {
        const StateLogHeader *h = data;

        if (size < STATE_LOG_HEADER_SIZE || memcmp(h->magic, STATE_LOG_MAGIC, 8) != 0 ||
            (h->version != 1 && h->version != STATE_LOG_VERSION) || h->record_size != STATE_LOG_RECORD_SIZE)
                return -EBADMSG;
        if (h->committed > h->capacity || h->committed > (size - STATE_LOG_HEADER_SIZE) / STATE_LOG_RECORD_SIZE)
                return -EBADMSG;
        *ret = h;
        return 0;
}

int state_log_read_generation(const void *data, size_t size, uint64_t *ret_generation) {
        const StateLogHeader *h = data;

        /* The header alone: the records are checked by the replay. */
        if (size < STATE_LOG_HEADER_SIZE || memcmp(h->magic, STATE_LOG_MAGIC, 8) != 0 ||
            (h->version != 1 && h->version != STATE_LOG_VERSION))
                return -EBADMSG;
        *ret_generation = h->generation;
        return 0;
}

/* One event about a keyed thing (a mapping by IOVA, a region by id), in log order. */
typedef struct Event {
        uint64_t key;
        uint64_t seq;
        const StateRecord *record; /* NULL: removed */
} Event;

/* A vfio-user session: its server, its client's latest record, the client's DMA entries. */
typedef struct VfioUserReplay {
        uint32_t server;
        const StateRecord *record;
        const StateRecord *client; /* NULL: no client */
        Event *dma;
        size_t n_dma;
} VfioUserReplay;

typedef struct Replay {
        uint64_t id;
        bool gone;
        char *head;      /* latest HEAD's JSON */
        Event *regions, *mappings;
        size_t n_regions, n_mappings;
        VfioUserReplay *vfio_user;
        size_t n_vfio_user;
} Replay;

static int event_compare(const void *a, const void *b) {
        const Event *x = a, *y = b;
        if (x->key != y->key)
                return x->key < y->key ? -1 : 1;
        return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int push_event(Event **l, size_t *n, uint64_t key, uint64_t seq, const StateRecord *r) {
        /* Doubling: realloc() per record would make a replay of 65535 mappings quadratic. */
        if (*n == 0 || (*n >= 16 && (*n & (*n - 1)) == 0)) {
                Event *a = realloc(*l, (*n ? *n * 2 : 16) * sizeof(Event));
                if (!a)
                        return -ENOMEM;
                *l = a;
        }
        (*l)[(*n)++] = (Event) { .key = key, .seq = seq, .record = r };
        return 0;
}

static Replay *replay_get(Replay **l, size_t *n, uint64_t id) {
        /* Records of one container come in runs: look where the last one was first. */
        static size_t last;
        if (last < *n && (*l)[last].id == id)
                return &(*l)[last];
        for (size_t i = 0; i < *n; i++)
                if ((*l)[i].id == id)
                        return &(*l)[last = i];
        Replay *a = realloc(*l, (*n + 1) * sizeof(Replay));
        if (!a)
                return NULL;
        *l = a;
        a[*n] = (Replay) { .id = id };
        last = *n;
        return &a[(*n)++];
}

static void replay_done(Replay *r) {
        free(r->head);
        free(r->regions);
        free(r->mappings);
        for (size_t i = 0; i < r->n_vfio_user; i++)
                free(r->vfio_user[i].dma);
        free(r->vfio_user);
        *r = (Replay) {};
}

static VfioUserReplay *vfio_user_replay_find(Replay *r, uint32_t server) {
        for (size_t i = 0; i < r->n_vfio_user; i++)
                if (r->vfio_user[i].server == server)
                        return &r->vfio_user[i];
        return NULL;
}

/* One vfio-user record. Records of a session that is not (or no longer) there are ignored: the session
 * ended, and what it left is in the container's own records. */
static int replay_vfio_user(Replay *c, const StateRecord *x, uint64_t seq, BrokerError *e) {
        uint32_t server = x->type == STATE_RECORD_VFIO_USER_SERVER ? x->vu_server.server :
                          x->type == STATE_RECORD_VFIO_USER_CLIENT ? x->vu_client.server : x->vu_dma.server;
        VfioUserReplay *v = vfio_user_replay_find(c, server);

        /* server is the first field of every kind; vu_dma's is read for CLIENT_GONE and STOP. */
        switch (x->type) {
        case STATE_RECORD_VFIO_USER_SERVER:
                if (memchr(x->vu_server.device, 0, sizeof(x->vu_server.device)) == NULL || x->vu_server.device[0] == 0)
                        return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "vfio-user record %" PRIu64 " is damaged",
                                                seq);
                if (!v) {
                        VfioUserReplay *a = realloc(c->vfio_user, (c->n_vfio_user + 1) * sizeof(VfioUserReplay));
                        if (!a)
                                return -ENOMEM;
                        c->vfio_user = a;
                        v = &a[c->n_vfio_user++];
                        *v = (VfioUserReplay) { .server = server };
                }
                v->record = x;
                v->client = NULL;
                v->n_dma = 0;
                return 0;
        case STATE_RECORD_VFIO_USER_CLIENT:
                if (!v)
                        return 0;
                if (!v->client || v->client->vu_client.serial != x->vu_client.serial)
                        v->n_dma = 0; /* a new client starts with an empty table */
                v->client = x;
                return 0;
        case STATE_RECORD_VFIO_USER_CLIENT_GONE:
                if (v) {
                        v->client = NULL;
                        v->n_dma = 0;
                }
                return 0;
        case STATE_RECORD_VFIO_USER_DMA_ADD:
        case STATE_RECORD_VFIO_USER_DMA_DEL:
                if (!v || !v->client)
                        return 0;
                return push_event(&v->dma, &v->n_dma, x->vu_dma.iova, seq,
                                  x->type == STATE_RECORD_VFIO_USER_DMA_ADD ? x : NULL);
        case STATE_RECORD_VFIO_USER_STOP:
                if (v) {
                        free(v->dma);
                        *v = c->vfio_user[--c->n_vfio_user];
                }
                return 0;
        }
        assert(false);
        return -EINVAL;
}

static size_t events_live(Event *l, size_t n);

static int replay_vfio_user_state(Replay *rp, ContainerState *st) {
        st->vfio_user = calloc(rp->n_vfio_user ?: 1, sizeof(StateVfioUser));
        if (!st->vfio_user)
                return -ENOMEM;
        for (size_t i = 0; i < rp->n_vfio_user; i++) {
                VfioUserReplay *v = &rp->vfio_user[i];
                StateVfioUser *s = &st->vfio_user[st->n_vfio_user++];
                const StateRecord *cl = v->client;
                size_t n;

                s->info.id = v->server;
                memcpy(s->info.device, v->record->vu_server.device, sizeof(s->info.device));
                if (cl) {
                        uint32_t f = cl->vu_client.flags;
                        s->info.has_client = true;
                        s->info.client_serial = cl->vu_client.serial;
                        s->info.uid = cl->vu_client.uid;
                        s->info.pid = cl->vu_client.pid;
                        s->info.irq_indexes = cl->vu_client.irq_indexes;
                        s->info.negotiated = f & STATE_VFIO_USER_CLIENT_NEGOTIATED;
                        s->info.warned_unmapped = f & STATE_VFIO_USER_CLIENT_WARNED_UNMAPPED;
                        s->info.capabilities = (VfioUserCapabilities) {
                                .max_msg_fds = cl->vu_client.max_msg_fds,
                                .max_data_xfer_size = cl->vu_client.max_data_xfer_size,
                                .pgsizes = cl->vu_client.pgsizes,
                                .max_dma_maps = cl->vu_client.max_dma_maps,
                                .twin_socket = f & STATE_VFIO_USER_CLIENT_TWIN_SOCKET,
                                .write_multiple = f & STATE_VFIO_USER_CLIENT_WRITE_MULTIPLE,
                        };
                }
                n = cl ? events_live(v->dma, v->n_dma) : 0;
                s->dma = calloc(n ?: 1, sizeof(VfioUserDmaInfo));
                if (!s->dma)
                        return -ENOMEM;
                for (size_t k = 0; k < n; k++) {
                        const StateRecord *d = v->dma[k].record;
                        s->dma[s->n_dma++] = (VfioUserDmaInfo) { d->vu_dma.iova, d->vu_dma.size,
                                                                 d->vu_dma.flags & STATE_VFIO_USER_DMA_MAPPED };
                }
        }
        return 0;
}

void container_states_free(ContainerState *l, size_t n) {
        for (size_t i = 0; i < n; i++)
                container_state_done(&l[i]);
        free(l);
}

/* The last event per key, if it is an addition; sorted by key. */
static size_t events_live(Event *l, size_t n) {
        size_t k = 0;

        if (n == 0)
                return 0;
        qsort(l, n, sizeof(Event), event_compare);
        for (size_t i = 0; i < n; i++)
                if ((i + 1 == n || l[i + 1].key != l[i].key) && l[i].record)
                        l[k++] = l[i];
        return k;
}

static int replay_state(Replay *rp, ContainerState *st, BrokerError *e) {
        size_t n;
        int r;

        if (!rp->head)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "container %" PRIu64 " has records but no head",
                                        rp->id);
        r = state_decode_head(rp->head, st, e);
        if (r < 0)
                return r;
        if (st->id != rp->id)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "head of container %" PRIu64 " names %" PRIu64,
                                        rp->id, st->id);

        n = events_live(rp->regions, rp->n_regions);
        st->regions = calloc(n ?: 1, sizeof(StateRegion));
        if (!st->regions)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const StateRecord *x = rp->regions[i].record;
                StateRegion *sr = &st->regions[st->n_regions++];
                sr->id = x->region.id;
                sr->flags = x->region.flags;
                memcpy(sr->file, x->region.file, sizeof(x->region.file));
        }

        n = events_live(rp->mappings, rp->n_mappings);
        st->mappings = calloc(n ?: 1, sizeof(StateMapping));
        if (!st->mappings)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const StateRecord *x = rp->mappings[i].record;
                st->mappings[st->n_mappings++] = (StateMapping) {
                        .iova = x->map.iova, .size = x->map.size, .offset = x->map.offset,
                        .region = x->map.region, .flags = x->map.flags,
                };
        }
        return replay_vfio_user_state(rp, st);
}

int state_log_replay(const void *data, size_t size, ContainerState **ret, size_t *ret_n, BrokerError *e) {
        const StateLogHeader *h;
        const StateRecord *records;
        Replay *rp = NULL;
        size_t n_rp = 0, n_states = 0;
        ContainerState *states = NULL;
        int r;

        r = check_header(data, size, &h);
        if (r < 0)
                return broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "not a state log, or a damaged header");
        records = (const StateRecord *) ((const uint8_t *) data + STATE_LOG_HEADER_SIZE);

        for (uint64_t i = 0; i < h->committed; i++) {
                const StateRecord *x = &records[i];
                Replay *c;

                if (record_crc(h->version, x) != x->crc) {
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "record %" PRIu64 " is damaged (CRC)", i);
                        goto finish;
                }
                if (x->container == 0 || x->type == STATE_RECORD_BLOB) {
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "record %" PRIu64 " is out of place", i);
                        goto finish;
                }
                c = replay_get(&rp, &n_rp, x->container);
                if (!c) {
                        r = -ENOMEM;
                        goto finish;
                }
                switch (x->type) {
                case STATE_RECORD_HEAD: {
                        uint64_t len = x->head.length, k = len < sizeof(x->head.data) ? len : sizeof(x->head.data);
                        uint64_t n_blobs = (len - k + sizeof(x->blob) - 1) / sizeof(x->blob);
                        char *text;

                        if (len > 1 << 20 || n_blobs > h->committed - i - 1) {
                                r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "head record %" PRIu64 " is damaged", i);
                                goto finish;
                        }
                        text = malloc(len + 1);
                        if (!text) {
                                r = -ENOMEM;
                                goto finish;
                        }
                        memcpy(text, x->head.data, k);
                        for (uint64_t b = 0; b < n_blobs; b++) {
                                const StateRecord *y = &records[i + 1 + b];
                                uint64_t off = k + b * sizeof(y->blob);
                                if (y->type != STATE_RECORD_BLOB || y->container != x->container ||
                                    record_crc(h->version, y) != y->crc) {
                                        free(text);
                                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS,
                                                             "head record %" PRIu64 " is incomplete", i);
                                        goto finish;
                                }
                                memcpy(text + off, y->blob, len - off < sizeof(y->blob) ? len - off : sizeof(y->blob));
                        }
                        text[len] = 0;
                        free(c->head);
                        c->head = text;
                        c->gone = false;
                        i += n_blobs;
                        break;
                }
                case STATE_RECORD_REGION_ADD:
                case STATE_RECORD_REGION_DEL:
                        if (x->type == STATE_RECORD_REGION_ADD &&
                            (memchr(x->region.file, 0, sizeof(x->region.file)) == NULL || x->region.file[0] == 0)) {
                                r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "region record %" PRIu64 " is damaged", i);
                                goto finish;
                        }
                        r = push_event(&c->regions, &c->n_regions, x->region.id, i,
                                       x->type == STATE_RECORD_REGION_ADD ? x : NULL);
                        if (r < 0)
                                goto finish;
                        break;
                case STATE_RECORD_MAP_ADD:
                case STATE_RECORD_MAP_DEL:
                        r = push_event(&c->mappings, &c->n_mappings, x->map.iova, i,
                                       x->type == STATE_RECORD_MAP_ADD ? x : NULL);
                        if (r < 0)
                                goto finish;
                        break;
                case STATE_RECORD_VFIO_USER_SERVER:
                case STATE_RECORD_VFIO_USER_CLIENT:
                case STATE_RECORD_VFIO_USER_CLIENT_GONE:
                case STATE_RECORD_VFIO_USER_DMA_ADD:
                case STATE_RECORD_VFIO_USER_DMA_DEL:
                case STATE_RECORD_VFIO_USER_STOP:
                        r = replay_vfio_user(c, x, i, e);
                        if (r < 0)
                                goto finish;
                        break;
                case STATE_RECORD_GONE: {

                        uint64_t id = c->id;
                        replay_done(c);
                        c->id = id;
                        c->gone = true;
                        break;
                }
                default:
                        r = broker_error_set(e, BROKER_ERROR_INVALID_ARGS, "record %" PRIu64 " has unknown type %" PRIu32,
                                             i, x->type);
                        goto finish;
                }
        }

        states = calloc(n_rp ?: 1, sizeof(ContainerState));
        if (!states) {
                r = -ENOMEM;
                goto finish;
        }
        for (size_t i = 0; i < n_rp; i++) {
                if (rp[i].gone)
                        continue;
                r = replay_state(&rp[i], &states[n_states], e);
                n_states++;
                if (r < 0)
                        goto finish;
        }
        r = 0;

finish:
        for (size_t i = 0; i < n_rp; i++)
                replay_done(&rp[i]);
        free(rp);
        if (r < 0) {
                container_states_free(states, n_states);
                return r;
        }
        *ret = states;
        *ret_n = n_states;
        return 0;
}
