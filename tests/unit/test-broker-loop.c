/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The broker on a real sd-event loop: the changes a dispatched source makes reach coalescing observers
 * once, when that iteration ends, and iteration_end (main.c's STATUS=) comes after them; an idle loop
 * runs neither. The other unit tests drive the logic without a loop, where changes go at once. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>
#include <systemd/sd-event.h>

#include "backend-sim.h"
#include "broker.h"
#include "container.h"

#define MiB (UINT64_C(1) << 20)

typedef struct Fixture {
        sd_event *event;
        Broker *broker;
        Container *container;
        int memfd;
        /* What the observer heard, and when. */
        unsigned n_changed, mask, n_end, n_changed_at_end, n_changed_in_dispatch;
} Fixture;

static void on_changed(void *userdata, Container *c, unsigned mask) {
        Fixture *f = userdata;
        f->n_changed++;
        f->mask |= mask;
}

static void on_iteration_end(void *userdata) {
        Fixture *f = userdata;
        f->n_end++;
        f->n_changed_at_end = f->n_changed;
}

static const BrokerObserver observer = {
        .coalesce = true,
        .container_changed = on_changed,
        .iteration_end = on_iteration_end,
};

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        BrokerConfig *config = NULL;
        Backend *backend = NULL;
        BrokerError e = BROKER_ERROR_INIT;

        assert_non_null(f);
        assert_int_equal(sd_event_new(&f->event), 0);
        assert_int_equal(broker_config_parse("{}", &config, &e), 0);
        assert_int_equal(backend_sim_new(config, &backend, &e), 0);
        assert_int_equal(broker_new(f->event, backend, config, &f->broker), 0);
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_int_equal(broker_observe(f->broker, &observer, f), 0);
        assert_int_equal(container_new(f->broker, ":1.42", 1000, "vm", &f->container, &e), 0);
        assert_int_equal(container_attach_group(f->container, 1, &e), 0);
        f->memfd = memfd_create("guest-ram", MFD_CLOEXEC);
        assert_true(f->memfd >= 0);
        assert_int_equal(ftruncate(f->memfd, 16 * MiB), 0);

        /* What set-up queued goes with the first iteration end, as main.c sends it before its loop. */
        broker_iteration_end(f->broker);
        f->n_changed = f->mask = f->n_end = f->n_changed_at_end = 0;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        broker_free(f->broker);
        sd_event_unref(f->event);
        close(f->memfd);
        free(f);
        return 0;
}

/* A request: two Maps in one dispatch, as an Update of two entries makes. */
static int on_request(sd_event_source *s, void *userdata) {
        Fixture *f = userdata;
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(container_map(f->container, f->memfd, 0, 1 * MiB, 0x100000, 3, &e), 0);
        assert_int_equal(container_map(f->container, f->memfd, 1 * MiB, 1 * MiB, 0x200000, 3, &e), 0);
        f->n_changed_in_dispatch = f->n_changed;
        return 0;
}

static void run_until_idle(sd_event *e) {
        int r;

        for (unsigned i = 0; i < 10; i++) {
                r = sd_event_run(e, 0);
                assert_true(r >= 0);
                if (r == 0)
                        return;
        }
        fail_msg("the loop never went idle");
}

static void test_changes_at_iteration_end(void **state) {
        Fixture *f = *state;

        assert_int_equal(sd_event_add_defer(f->event, NULL, on_request, f), 0);
        run_until_idle(f->event);

        /* Nothing during the request; once after it, with both Maps in the mask; then iteration_end. */
        assert_int_equal(f->n_changed_in_dispatch, 0);
        assert_int_equal(f->n_changed, 1);
        assert_true(f->mask & CONTAINER_CHANGE_MAPPINGS);
        assert_int_equal(f->n_end, 1);
        assert_int_equal(f->n_changed_at_end, 1);
        assert_int_equal(container_n_mappings(f->container), 2);
}

static void test_idle_loop_runs_nothing(void **state) {
        Fixture *f = *state;

        assert_int_equal(sd_event_run(f->event, 0), 0);
        assert_int_equal(f->n_changed, 0);
        assert_int_equal(f->n_end, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_changes_at_iteration_end, setup, teardown),
                cmocka_unit_test_setup_teardown(test_idle_loop_runs_nothing, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
