/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Crash consistency: 200 times, the daemon is killed (SIGKILL) at a random moment while a client runs a
 * storm of Map, Unmap and Update, and comes back with the fds the harness's stand-in store kept. After
 * each restart the container holds exactly what was acknowledged, plus the request in flight wholly or
 * not at all; every few cycles each mapping is checked one by one (removed whole, at its IOVA and
 * size); the store holds one fd per memory file in use, and nothing once the container is closed. */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

#define MiB (UINT64_C(1) << 20)
#define CYCLES 200
#define FILES 6
#define SLOTS 256
#define SLOT_SIZE (1 * MiB)

static sd_bus *bus;

/* What the client believes the container holds: a mapping per IOVA slot. */
typedef struct Slot {
        bool used;
        unsigned file;
        uint64_t offset, size;
        uint32_t flags;
} Slot;

typedef struct Model {
        Slot slots[SLOTS];
        unsigned n;
        uint64_t bytes;
} Model;

static int files[FILES];

static void model_set(Model *m, unsigned i, const Slot *s) {
        if (m->slots[i].used) {
                m->n--;
                m->bytes -= m->slots[i].size;
        }
        m->slots[i] = s ? *s : (Slot) {};
        if (s) {
                m->n++;
                m->bytes += s->size;
        }
}

typedef struct Op {
        enum { OP_MAP, OP_UNMAP, OP_UPDATE } kind;
        unsigned unmap;      /* slot */
        unsigned map[2];     /* slots */
        Slot new[2];
} Op;

static void op_apply(Model *m, const Op *op) {
        if (op->kind != OP_MAP)
                model_set(m, op->unmap, NULL);
        if (op->kind == OP_MAP)
                model_set(m, op->map[0], &op->new[0]);
        if (op->kind == OP_UPDATE) {
                model_set(m, op->map[0], &op->new[0]);
                model_set(m, op->map[1], &op->new[1]);
        }
}

static unsigned random_slot(const Model *m, bool used) {
        for (;;) {
                unsigned i = (unsigned) random() % SLOTS;
                if (m->slots[i].used == used)
                        return i;
        }
}

static Slot random_mapping(void) {
        Slot s = { .used = true, .file = (unsigned) random() % FILES, .flags = random() % 2 ? 3 : 1 };
        s.size = (uint64_t) (1 + random() % 16) * 4096;
        s.offset = (uint64_t) (random() % 1024) * 4096;
        return s;
}

static Op random_op(const Model *m) {
        Op op = {};
        unsigned free_slots = SLOTS - m->n;

        if (m->n == 0 || (m->n < SLOTS / 2 && random() % 3 == 0))
                op.kind = OP_MAP;
        else if (free_slots < 4 || random() % 2 == 0)
                op.kind = OP_UNMAP;
        else
                op.kind = OP_UPDATE;
        if (op.kind != OP_MAP)
                op.unmap = random_slot(m, true);
        if (op.kind != OP_UNMAP) {
                op.map[0] = random_slot(m, false);
                op.new[0] = random_mapping();
        }
        if (op.kind == OP_UPDATE) {
                do
                        op.map[1] = random_slot(m, false);
                while (op.map[1] == op.map[0]);
                op.new[1] = random_mapping();
        }
        return op;
}

static uint64_t slot_iova(unsigned i) {
        return 0x40000000ULL + (uint64_t) i * SLOT_SIZE;
}

/* Sends op; returns 0, or the error name (a daemon that died answers with the bus's errors). */
static const char *op_call(const char *path, const Op *op, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const Slot *a = &op->new[0], *b = &op->new[1];
        int r;

        switch (op->kind) {
        case OP_MAP:
                r = sd_bus_call_method(bus, BUS_NAME, path, CONTAINER_IFACE, "Map", error, NULL, "htttu", files[a->file],
                                       a->offset, a->size, slot_iova(op->map[0]), a->flags);
                break;
        case OP_UNMAP:
                r = sd_bus_call_method(bus, BUS_NAME, path, CONTAINER_IFACE, "Unmap", error, NULL, "tt",
                                       slot_iova(op->unmap), (uint64_t) SLOT_SIZE);
                break;
        default:
                assert_true(sd_bus_message_new_method_call(bus, &m, BUS_NAME, path, CONTAINER_IFACE, "Update") >= 0);
                assert_true(sd_bus_message_append(m, "a(tt)", 1, slot_iova(op->unmap), (uint64_t) SLOT_SIZE) >= 0);
                assert_true(sd_bus_message_append(m, "ah", 2, files[a->file], files[b->file]) >= 0);
                assert_true(sd_bus_message_append(m, "a(utttu)", 2, UINT32_C(0), a->offset, a->size,
                                                  slot_iova(op->map[0]), a->flags, UINT32_C(1), b->offset, b->size,
                                                  slot_iova(op->map[1]), b->flags) >= 0);
                r = sd_bus_call(bus, m, 0, error, &reply);
        }
        return r < 0 ? error->name ? error->name : "?" : NULL;
}

typedef struct Killer {
        pid_t pid;
        unsigned delay_us;
} Killer;

static void *killer(void *userdata) {
        Killer *k = userdata;
        struct timespec ts = { .tv_sec = k->delay_us / 1000000, .tv_nsec = (long) (k->delay_us % 1000000) * 1000 };

        nanosleep(&ts, NULL);
        (void) kill(k->pid, SIGKILL);
        return NULL;
}

/* The memory names in the store ("m<n>"): one per memory file in use. */
static unsigned stored_memory(void) {
        char buf[4096], *p, *save = NULL;
        unsigned n = 0;

        snprintf(buf, sizeof(buf), "%s", test_harness("fds"));
        for (p = strtok_r(buf, " ", &save); p; p = strtok_r(NULL, " ", &save))
                if (p[0] == 'm')
                        n++;
        return n;
}

static unsigned files_in_use(const Model *m) {
        bool used[FILES] = {};
        unsigned n = 0;

        for (unsigned i = 0; i < SLOTS; i++)
                if (m->slots[i].used && !used[m->slots[i].file]) {
                        used[m->slots[i].file] = true;
                        n++;
                }
        return n;
}

/* Each mapping of the model, removed one by one: exactly there, exactly that size. */
static void check_one_by_one(const char *path, Model *m) {
        for (unsigned i = 0; i < SLOTS; i++) {
                if (!m->slots[i].used)
                        continue;
                test_call_ok(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", slot_iova(i), m->slots[i].size);
                model_set(m, i, NULL);
        }
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 0);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 0);
}

static void test_crash_consistency(void **state) {
        _cleanup_free_ char *path = test_create_container(bus, "crash");
        Model model = {};
        unsigned acknowledged = 0, in_flight_present = 0, in_flight_absent = 0;
        const char *seed_env = getenv("VFIO_BROKER_TEST_SEED");
        unsigned seed = seed_env ? (unsigned) strtoul(seed_env, NULL, 0) : (unsigned) time(NULL);
        pid_t pid;

        printf("# seed %u (VFIO_BROKER_TEST_SEED repeats a run)\n", seed);
        srandom(seed);
        pid = (pid_t) atoi(getenv("VFIO_BROKER_DAEMON_PID"));
        for (unsigned i = 0; i < FILES; i++)
                files[i] = test_memfd(8 * MiB);
        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", 1);

        for (unsigned cycle = 0; cycle < CYCLES; cycle++) {
                Killer k = { .pid = pid, .delay_us = (unsigned) random() % 20000 };
                pthread_t thread;
                Op op, in_flight = {};
                bool uncertain = false;

                assert_int_equal(pthread_create(&thread, NULL, killer, &k), 0);
                for (;;) {
                        sd_bus_error error = SD_BUS_ERROR_NULL;
                        const char *e;

                        op = random_op(&model);
                        e = op_call(path, &op, &error);
                        if (!e) {
                                op_apply(&model, &op);
                                acknowledged++;
                                continue;
                        }
                        /* Only the daemon's death may fail a request of this storm. */
                        if (strncmp(e, "org.vfiobroker.", 15) == 0)
                                fail_msg("cycle %u: %s: %s", cycle, e, error.message);
                        sd_bus_error_free(&error);
                        in_flight = op;
                        uncertain = true;
                        break;
                }
                assert_int_equal(pthread_join(thread, NULL), 0);
                assert_string_equal(test_harness("kill9"), "killed");
                const char *started = test_harness("start");
                assert_true(strncmp(started, "started ", 8) == 0);
                pid = (pid_t) atoi(started + 8);

                /* Acknowledged: all there. In flight: wholly or not at all (every request here
                 * changes the number of mappings, so the two cannot be confused). */
                assert_true(test_object_exists(bus, path));
                uint32_t n = test_get_u32(bus, path, CONTAINER_IFACE, "Mappings");
                uint64_t bytes = test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes");
                Model after = model;
                if (uncertain)
                        op_apply(&after, &in_flight);
                if (n == model.n && bytes == model.bytes)
                        in_flight_absent++;
                else if (uncertain && n == after.n && bytes == after.bytes) {
                        model = after;
                        in_flight_present++;
                } else
                        fail_msg("cycle %u: restored %" PRIu32 " mappings, %" PRIu64 " bytes; acknowledged %u, %" PRIu64
                                 " (with the request in flight: %u, %" PRIu64 ")", cycle, n, bytes, model.n,
                                 model.bytes, after.n, after.bytes);
                /* One fd per memory file in use, none for memory no longer mapped. */
                assert_int_equal(stored_memory(), files_in_use(&model));
                if (cycle % 25 == 24)
                        check_one_by_one(path, &model);
        }
        printf("# %u cycles, %u requests acknowledged; the request in flight was restored whole %u times and "
               "absent %u times\n", CYCLES, acknowledged, in_flight_present, in_flight_absent);

        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        for (int i = 0; i < 200 && stored_memory() > 0; i++)
                usleep(10000);
        assert_int_equal(stored_memory(), 0);
        for (unsigned i = 0; i < FILES; i++)
                close(files[i]);
}

static int setup(void **state) {
        bus = test_bus_open();
        return 0;
}

static int teardown(void **state) {
        sd_bus_flush_close_unref(bus);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_crash_consistency),
        };
        return cmocka_run_group_tests_name("crash", tests, setup, teardown);
}
