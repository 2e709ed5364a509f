/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Groups follow the host: when the backend's answer changes (a driver bound or unbound, a device
 * hot-plugged, a /dev/vfio/N appearing or going), broker_refresh_groups() reports it through the
 * observer, once per change, and only what changed. The sim backend reads its topology from the
 * configuration, so the test changes the configuration the way the kernel would change sysfs. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "broker.h"
#include "container.h"
#include "group.h"

#define MAX_IDS 16

typedef struct Heard {
        unsigned changed[MAX_IDS], added[MAX_IDS], removed[MAX_IDS];
        unsigned n_changed, n_added, n_removed;
} Heard;

typedef struct Fixture {
        Broker *broker;
        Heard at_once, coalesced; /* a persistence-like observer and a D-Bus-like one */
} Fixture;

static void heard(unsigned *ids, unsigned *n, const Group *g) {
        assert_true(*n < MAX_IDS);
        ids[(*n)++] = g->id;
}

static void on_changed(void *userdata, Group *g) {
        Heard *h = userdata;
        heard(h->changed, &h->n_changed, g);
}

static void on_added(void *userdata, Group *g) {
        Heard *h = userdata;
        heard(h->added, &h->n_added, g);
}

static void on_removed(void *userdata, Group *g) {
        Heard *h = userdata;
        heard(h->removed, &h->n_removed, g);
}

static const BrokerObserver observer_at_once = {
        .group_added = on_added,
        .group_changed = on_changed,
        .group_removed = on_removed,
};

static const BrokerObserver observer_coalesced = {
        .coalesce = true,
        .group_added = on_added,
        .group_changed = on_changed,
        .group_removed = on_removed,
};

static const char config_text[] =
        "{\"sim\": {\"groups\": ["
        "{\"id\": 1, \"devices\": [\"0000:00:01.0\"], \"viable\": true},"
        "{\"id\": 2, \"devices\": [\"0000:00:02.0\", \"0000:00:02.1\"], \"viable\": true},"
        "{\"id\": 3, \"devices\": [\"0000:00:03.0\"], \"viable\": true}]}}";

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        BrokerConfig *config = NULL;
        Backend *backend = NULL;
        BrokerError e = BROKER_ERROR_INIT;

        assert_non_null(f);
        assert_int_equal(broker_config_parse(config_text, &config, &e), 0);
        assert_int_equal(backend_sim_new(config, &backend, &e), 0);
        assert_int_equal(broker_new(NULL, backend, config, &f->broker), 0);
        assert_int_equal(broker_observe(f->broker, &observer_at_once, &f->at_once), 0);
        assert_int_equal(broker_observe(f->broker, &observer_coalesced, &f->coalesced), 0);
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_int_equal(f->broker->n_groups, 3);
        assert_int_equal(f->at_once.n_added, 3);
        memset(&f->at_once, 0, sizeof(Heard));
        memset(&f->coalesced, 0, sizeof(Heard));
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        broker_free(f->broker);
        free(f);
        return 0;
}

/* The host's view of group id, as the sim backend reads it. */
static SimGroupConfig *host_group(Fixture *f, unsigned id) {
        for (size_t i = 0; i < f->broker->config->sim.n_groups; i++)
                if (f->broker->config->sim.groups[i].id == id)
                        return &f->broker->config->sim.groups[i];
        fail_msg("no group %u in the sim configuration", id);
        return NULL;
}

static void assert_heard_only(const Heard *h, unsigned changed, unsigned added, unsigned removed) {
        assert_int_equal(h->n_changed, changed ? 1 : 0);
        if (changed)
                assert_int_equal(h->changed[0], changed);
        assert_int_equal(h->n_added, added ? 1 : 0);
        if (added)
                assert_int_equal(h->added[0], added);
        assert_int_equal(h->n_removed, removed ? 1 : 0);
        if (removed)
                assert_int_equal(h->removed[0], removed);
}

static void test_nothing_changed_nothing_reported(void **state) {
        Fixture *f = *state;

        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_heard_only(&f->at_once, 0, 0, 0);
        assert_heard_only(&f->coalesced, 0, 0, 0);
        assert_int_equal(group_refresh(broker_find_group(f->broker, 1)), 0);
        assert_heard_only(&f->at_once, 0, 0, 0);
}

static void test_viable_change_reported(void **state) {
        Fixture *f = *state;
        Group *g = broker_find_group(f->broker, 2);

        /* A device of group 2 bound to a host driver: not viable any more. */
        host_group(f, 2)->viable = false;
        assert_true(g->viable);
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_false(g->viable);
        assert_heard_only(&f->at_once, 2, 0, 0);
        assert_heard_only(&f->coalesced, 2, 0, 0);

        /* And back. */
        memset(&f->at_once, 0, sizeof(Heard));
        memset(&f->coalesced, 0, sizeof(Heard));
        host_group(f, 2)->viable = true;
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_true(g->viable);
        assert_heard_only(&f->at_once, 2, 0, 0);
        assert_heard_only(&f->coalesced, 2, 0, 0);
}

static void test_devices_change_reported(void **state) {
        Fixture *f = *state;
        Group *g = broker_find_group(f->broker, 2);
        SimGroupConfig *host = host_group(f, 2);

        /* 0000:00:02.1 hot-unplugged. */
        free(host->devices[1]);
        host->devices[1] = NULL;
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_int_equal(strv_length(g->devices), 1);
        assert_string_equal(g->devices[0], "0000:00:02.0");
        assert_true(group_has_device(g, "0000:00:02.0"));
        assert_false(group_has_device(g, "0000:00:02.1"));
        assert_null(broker_find_group_of_device(f->broker, "0000:00:02.1"));
        assert_heard_only(&f->at_once, 2, 0, 0);
        assert_heard_only(&f->coalesced, 2, 0, 0);
}

static void test_attach_rechecks_and_reports(void **state) {
        Fixture *f = *state;
        BrokerError e = BROKER_ERROR_INIT;
        Container *c = NULL;

        /* The monitor has not run yet (or missed the event): attach asks the backend itself, refuses,
         * and the change it noticed reaches the watchers too, or their caches would stay stale. */
        host_group(f, 3)->viable = false;
        assert_true(broker_find_group(f->broker, 3)->viable);
        assert_int_equal(container_new(f->broker, ":1.7", 1000, "vm", &c, &e), 0);
        assert_true(container_attach_group(c, 3, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_NOT_VIABLE);
        assert_null(broker_find_group(f->broker, 3)->container);
        assert_heard_only(&f->at_once, 3, 0, 0);
        assert_heard_only(&f->coalesced, 3, 0, 0);
        container_close(c);
}

static void test_groups_appear_and_vanish(void **state) {
        Fixture *f = *state;
        Group *g;

        /* The last device of IOMMU group 3 unbound from vfio-pci and the first of group 7 bound:
         * /dev/vfio/3 goes, /dev/vfio/7 comes. */
        host_group(f, 3)->id = 7;
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_null(broker_find_group(f->broker, 3));
        g = broker_find_group(f->broker, 7);
        assert_non_null(g);
        assert_string_equal(g->path, BROKER_GROUP_PREFIX "/7");
        assert_string_equal(g->devices[0], "0000:00:03.0");
        assert_int_equal(f->broker->n_groups, 3);
        assert_heard_only(&f->at_once, 0, 7, 3);
        /* Added and removed go at once to every watcher, coalescing or not. */
        assert_heard_only(&f->coalesced, 0, 7, 3);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_nothing_changed_nothing_reported, setup, teardown),
                cmocka_unit_test_setup_teardown(test_viable_change_reported, setup, teardown),
                cmocka_unit_test_setup_teardown(test_devices_change_reported, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_rechecks_and_reports, setup, teardown),
                cmocka_unit_test_setup_teardown(test_groups_appear_and_vanish, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
