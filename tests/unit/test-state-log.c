/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The state log: what is committed is replayed to the state it describes (additions, removals, heads
 * that replace heads, containers gone), what is not committed does not count, and damage in the
 * committed part refuses the whole log. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "state-log.h"

#define HEAD(id, label) "{\"version\":1,\"backend\":\"sim\",\"id\":" #id ",\"owner\":\":1.7\",\"uid\":1000,\"label\":\"" label "\",\"groups\":[1]}"

static void append_head(StateLog *l, uint64_t id, const char *json) {
        assert_int_equal(state_log_append_head(l, id, json, strlen(json)), 0);
}

static void append_region(StateLog *l, uint64_t id, uint32_t region, const char *file) {
        StateRecord r = { .type = STATE_RECORD_REGION_ADD, .container = id, .region.id = region, .region.flags = 3 };
        snprintf(r.region.file, sizeof(r.region.file), "%s", file);
        assert_int_equal(state_log_append(l, &r), 0);
}

static void append_map(StateLog *l, uint64_t id, bool add, uint64_t iova, uint64_t size, uint32_t region) {
        StateRecord r = { .type = add ? STATE_RECORD_MAP_ADD : STATE_RECORD_MAP_DEL, .container = id,
                          .map = { .iova = iova, .size = size, .offset = iova, .region = region, .flags = 3 } };
        assert_int_equal(state_log_append(l, &r), 0);
}

/* The log's bytes as a new instance sees them: through the memfd. */
static int replay(StateLog *l, ContainerState **ret, size_t *n, BrokerError *e) {
        struct stat st;
        void *p;
        int r;

        assert_int_equal(fstat(state_log_fd(l), &st), 0);
        p = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED, state_log_fd(l), 0);
        assert_true(p != MAP_FAILED);
        r = state_log_replay(p, (size_t) st.st_size, ret, n, e);
        munmap(p, (size_t) st.st_size);
        return r;
}

static void test_replay(void **state) {
        StateLog *l = NULL;
        ContainerState *s = NULL;
        size_t n = 0;
        BrokerError e = BROKER_ERROR_INIT;
        char label[400];

        assert_int_equal(state_log_new(7, 1024, &l), 0);
        assert_int_equal(state_log_generation(l), 7);
        append_head(l, 1, HEAD(1, "first"));
        append_region(l, 1, 0, "m0");
        append_region(l, 1, 1, "m1");
        for (uint64_t i = 0; i < 5; i++)
                append_map(l, 1, true, 0x100000 * (i + 1), 0x1000, (uint32_t) (i % 2));
        append_map(l, 1, false, 0x200000, 0, 0);
        append_map(l, 1, false, 0x400000, 0, 0);
        append_map(l, 1, true, 0x400000, 0x2000, 0); /* again, other size */
        /* A second container, gone, and a third with a head longer than one record, replaced. */
        append_head(l, 2, HEAD(2, "gone"));
        append_region(l, 2, 0, "m2");
        append_map(l, 2, true, 0x1000, 0x1000, 0);
        StateRecord gone = { .type = STATE_RECORD_GONE, .container = 2 };
        assert_int_equal(state_log_append(l, &gone), 0);
        memset(label, 'x', sizeof(label) - 1);
        label[sizeof(label) - 1] = 0;
        char head3[600];
        snprintf(head3, sizeof(head3), "{\"version\":1,\"backend\":\"sim\",\"id\":3,\"owner\":\":1.9\",\"uid\":0,"
                 "\"label\":\"%s\",\"groups\":[]}", label);
        append_head(l, 3, HEAD(3, "old"));
        append_head(l, 3, head3);
        assert_true(state_log_dirty(l));
        state_log_commit(l);
        assert_false(state_log_dirty(l));
        /* Not committed: does not count. */
        append_map(l, 1, true, 0x900000, 0x1000, 0);
        append_region(l, 3, 0, "m9");

        assert_int_equal(replay(l, &s, &n, &e), 0);
        assert_int_equal(n, 2);
        ContainerState *c1 = s[0].id == 1 ? &s[0] : &s[1], *c3 = s[0].id == 1 ? &s[1] : &s[0];
        assert_int_equal(c1->id, 1);
        assert_string_equal(c1->label, "first");
        assert_int_equal(c1->uid, 1000);
        assert_int_equal(c1->n_groups, 1);
        assert_int_equal(c1->n_regions, 2);
        assert_string_equal(c1->regions[0].file, "m0");
        assert_string_equal(c1->regions[1].file, "m1");
        assert_int_equal(c1->n_mappings, 4);
        assert_int_equal(c1->mappings[0].iova, 0x100000);
        assert_int_equal(c1->mappings[1].iova, 0x300000);
        assert_int_equal(c1->mappings[2].iova, 0x400000);
        assert_int_equal(c1->mappings[2].size, 0x2000);
        assert_int_equal(c1->mappings[3].iova, 0x500000);
        assert_int_equal(c1->mappings[3].region, 0);
        assert_int_equal(c3->id, 3);
        assert_string_equal(c3->label, label);
        assert_int_equal(c3->n_regions, 0);
        assert_int_equal(c3->n_mappings, 0);
        container_states_free(s, n);
        state_log_free(l);
}

static void test_damage(void **state) {
        StateLog *l = NULL;
        ContainerState *s = NULL;
        size_t n = 0;
        BrokerError e = BROKER_ERROR_INIT;
        uint8_t byte;
        off_t off;

        assert_int_equal(state_log_new(1, 64, &l), 0);
        append_head(l, 1, HEAD(1, "vm"));
        append_map(l, 1, true, 0x100000, 0x1000, 0);
        state_log_commit(l);
        uint64_t committed = state_log_used(l);
        append_map(l, 1, true, 0x200000, 0x1000, 0);

        /* Damage after the commit point is nothing. */
        off = STATE_LOG_HEADER_SIZE + (off_t) committed * STATE_LOG_RECORD_SIZE + 20;
        assert_int_equal(pread(state_log_fd(l), &byte, 1, off), 1);
        byte ^= 1;
        assert_int_equal(pwrite(state_log_fd(l), &byte, 1, off), 1);
        assert_int_equal(replay(l, &s, &n, &e), 0);
        assert_int_equal(n, 1);
        container_states_free(s, n);

        /* Before it, the whole log is refused, with a reason. */
        off = STATE_LOG_HEADER_SIZE + (off_t) (committed - 1) * STATE_LOG_RECORD_SIZE + 20;
        assert_int_equal(pread(state_log_fd(l), &byte, 1, off), 1);
        byte ^= 1;
        assert_int_equal(pwrite(state_log_fd(l), &byte, 1, off), 1);
        assert_true(replay(l, &s, &n, &e) < 0);
        assert_non_null(strstr(e.message, "CRC"));
        state_log_free(l);

        /* A full log refuses a record, and a head it has no room for whole. */
        assert_int_equal(state_log_new(1, 2, &l), 0);
        append_map(l, 1, true, 0x100000, 0x1000, 0);
        assert_int_equal(state_log_append_head(l, 1, HEAD(1, "no room for me"), strlen(HEAD(1, "no room for me"))),
                         -ENOSPC);
        assert_int_equal(state_log_used(l), 1);
        state_log_free(l);

        /* Not a log at all. */
        char junk[STATE_LOG_HEADER_SIZE] = "junk";
        e = (BrokerError) BROKER_ERROR_INIT;
        assert_true(state_log_replay(junk, sizeof(junk), &s, &n, &e) < 0);
        assert_true(broker_error_is_set(&e));
}

/* A record whose head is missing, or records that name a container without one: refused. */
static void test_without_head(void **state) {
        StateLog *l = NULL;
        ContainerState *s = NULL;
        size_t n = 0;
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(state_log_new(1, 64, &l), 0);
        append_map(l, 5, true, 0x100000, 0x1000, 0);
        state_log_commit(l);
        assert_true(replay(l, &s, &n, &e) < 0);
        assert_non_null(strstr(e.message, "no head"));
        state_log_free(l);
}

/* Version 2 checksums records with CRC-32C: the standard's check value, on every path (the CPU's
 * instruction where it has one, the table where not, agree on every length). */
static void test_crc32c(void **state) {
        uint8_t data[200];
        uint32_t crc = UINT32_MAX;

        assert_int_equal(state_crc32c("123456789", 9), 0xe3069283);
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (uint8_t) (i * 37 + 11);
        for (size_t n = 0; n <= sizeof(data); n++) {
                crc = UINT32_MAX;
                for (size_t i = 0; i < n; i++) {
                        crc ^= data[i];
                        for (int k = 0; k < 8; k++)
                                crc = crc & 1 ? UINT32_C(0x82f63b78) ^ (crc >> 1) : crc >> 1;
                }
                assert_int_equal(state_crc32c(data, n), crc ^ UINT32_MAX);
        }
        assert_int_equal(state_crc32("123456789", 9), 0xcbf43926);
}

/* A log of an earlier daemon (version 1, records with CRC-32) is still replayed; damage in it is still
 * found. */
static void test_version1(void **state) {
        StateLog *l = NULL;
        ContainerState *s = NULL;
        size_t n = 0;
        BrokerError e = BROKER_ERROR_INIT;
        struct stat st;
        uint8_t *p;

        assert_int_equal(state_log_new(3, 64, &l), 0);
        append_head(l, 1, HEAD(1, "old"));
        append_region(l, 1, 0, "m0");
        append_map(l, 1, true, 0x100000, 0x1000, 0);
        state_log_commit(l);
        assert_int_equal(fstat(state_log_fd(l), &st), 0);
        p = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, state_log_fd(l), 0);
        assert_true(p != MAP_FAILED);
        StateLogHeader *h = (StateLogHeader *) p;
        assert_int_equal(h->version, 2);
        h->version = 1;
        for (uint64_t i = 0; i < h->committed; i++) {
                StateRecord *r = (StateRecord *) (p + STATE_LOG_HEADER_SIZE) + i;
                r->crc = 0;
                r->crc = state_crc32(r, sizeof(*r));
        }
        assert_int_equal(state_log_replay(p, (size_t) st.st_size, &s, &n, &e), 0);
        assert_int_equal(n, 1);
        assert_string_equal(s[0].label, "old");
        assert_int_equal(s[0].n_mappings, 1);
        container_states_free(s, n);
        /* Its records are checked with CRC-32: one flipped bit is found. */
        ((StateRecord *) (p + STATE_LOG_HEADER_SIZE) + 1)->map.iova ^= 0x40;
        assert_true(state_log_replay(p, (size_t) st.st_size, &s, &n, &e) < 0);
        munmap(p, (size_t) st.st_size);
        state_log_free(l);
}

static void append_vu(StateLog *l, uint64_t id, uint32_t type, uint32_t server, uint32_t serial, uint64_t iova,
                      bool mapped) {
        StateRecord r = { .type = type, .container = id };

        switch (type) {
        case STATE_RECORD_VFIO_USER_SERVER:
                r.vu_server.server = server;
                snprintf(r.vu_server.device, sizeof(r.vu_server.device), "0000:00:%02x.0", server);
                break;
        case STATE_RECORD_VFIO_USER_CLIENT:
                r.vu_client = (typeof(r.vu_client)) { .server = server, .serial = serial, .uid = 1000, .pid = 42,
                                                      .irq_indexes = 1 << 2, .flags = STATE_VFIO_USER_CLIENT_NEGOTIATED,
                                                      .max_msg_fds = 16, .max_data_xfer_size = 1 << 20,
                                                      .pgsizes = 4096, .max_dma_maps = 65535 };
                break;
        default:
                r.vu_dma = (typeof(r.vu_dma)) { .server = server, .flags = mapped ? STATE_VFIO_USER_DMA_MAPPED : 0,
                                                .iova = iova, .size = 0x1000 };
        }
        assert_int_equal(state_log_append(l, &r), 0);
}

/* vfio-user sessions: a new client starts with an empty table, a client gone takes its table along, a
 * stopped server goes, records of a session that is not there are ignored, and GONE ends them all. */
static void test_replay_vfio_user(void **state) {
        StateLog *l = NULL;
        ContainerState *s = NULL;
        size_t n = 0;
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(state_log_new(1, 1024, &l), 0);
        append_head(l, 1, HEAD(1, "vm"));
        append_vu(l, 1, STATE_RECORD_VFIO_USER_DMA_ADD, 9, 0, 0x1000, true); /* no such server yet */
        append_vu(l, 1, STATE_RECORD_VFIO_USER_SERVER, 1, 0, 0, false);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_CLIENT, 1, 1, 0, false);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_DMA_ADD, 1, 0, 0x1000, true);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_CLIENT_GONE, 1, 0, 0, false);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_CLIENT, 1, 2, 0, false);       /* the next client */
        append_vu(l, 1, STATE_RECORD_VFIO_USER_DMA_ADD, 1, 0, 0x2000, true);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_DMA_ADD, 1, 0, 0x4000, false);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_DMA_ADD, 1, 0, 0x8000, true);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_DMA_DEL, 1, 0, 0x8000, false);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_CLIENT, 1, 2, 0, false);       /* the same client, changed */
        append_vu(l, 1, STATE_RECORD_VFIO_USER_SERVER, 2, 0, 0, false);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_CLIENT, 2, 1, 0, false);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_DMA_ADD, 2, 0, 0x1000, true);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_STOP, 2, 0, 0, false);
        append_head(l, 2, HEAD(2, "gone"));
        append_vu(l, 2, STATE_RECORD_VFIO_USER_SERVER, 3, 0, 0, false);
        StateRecord gone = { .type = STATE_RECORD_GONE, .container = 2 };
        assert_int_equal(state_log_append(l, &gone), 0);
        /* Not committed: does not count. */
        state_log_commit(l);
        append_vu(l, 1, STATE_RECORD_VFIO_USER_CLIENT_GONE, 1, 0, 0, false);

        assert_int_equal(replay(l, &s, &n, &e), 0);
        assert_int_equal(n, 1);
        assert_int_equal(s[0].n_vfio_user, 1);
        StateVfioUser *v = &s[0].vfio_user[0];
        assert_int_equal(v->info.id, 1);
        assert_string_equal(v->info.device, "0000:00:01.0");
        assert_true(v->info.has_client);
        assert_int_equal(v->info.client_serial, 2);
        assert_int_equal(v->info.uid, 1000);
        assert_int_equal(v->info.pid, 42);
        assert_true(v->info.negotiated);
        assert_int_equal(v->info.irq_indexes, 1 << 2);
        assert_int_equal(v->info.capabilities.max_data_xfer_size, 1 << 20);
        assert_int_equal(v->n_dma, 2);
        assert_int_equal(v->dma[0].iova, 0x2000);
        assert_true(v->dma[0].mapped);
        assert_int_equal(v->dma[1].iova, 0x4000);
        assert_false(v->dma[1].mapped);
        container_states_free(s, n);

        /* A device name without its NUL is damage. */
        StateRecord bad = { .type = STATE_RECORD_VFIO_USER_SERVER, .container = 1, .vu_server.server = 5 };
        memset(bad.vu_server.device, 'x', sizeof(bad.vu_server.device));
        assert_int_equal(state_log_append(l, &bad), 0);
        state_log_commit(l);
        assert_true(replay(l, &s, &n, &e) < 0);
        state_log_free(l);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_replay),
                cmocka_unit_test(test_damage),
                cmocka_unit_test(test_without_head),
                cmocka_unit_test(test_crc32c),
                cmocka_unit_test(test_version1),
                cmocka_unit_test(test_replay_vfio_user),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
