/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The encoding of a container's state: what state_encode() writes, state_decode() reads back whole,
 * and whatever else it is given it refuses with a reason, never half. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend-sim.h"
#include "broker.h"
#include "container.h"
#include "state-encode.h"

#define MiB (UINT64_C(1) << 20)

static char *encode(const Container *c) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        assert_non_null(f);
        assert_int_equal(state_encode(c, "sim", f), 0);
        assert_int_equal(fclose(f), 0);
        return text;
}

static void test_round_trip(void **state) {
        BrokerConfig *config = NULL;
        Backend *backend = NULL;
        Broker *b = NULL;
        Container *c = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        ContainerState st = {};
        int fd;

        assert_int_equal(broker_config_new_default(&config), 0);
        assert_int_equal(backend_sim_new(config, &backend, &e), 0);
        assert_int_equal(broker_new(NULL, backend, config, &b), 0);
        assert_int_equal(broker_refresh_groups(b), 0);
        assert_int_equal(container_new(b, ":1.5", 1000, "vm \"one\"", &c, &e), 0);
        assert_int_equal(container_attach_group(c, 2, &e), 0);
        assert_int_equal(container_attach_group(c, 1, &e), 0);
        fd = memfd_create("ram", MFD_CLOEXEC);
        assert_int_equal(ftruncate(fd, 8 * MiB), 0);
        assert_int_equal(container_map(c, fd, 0, 1 * MiB, 0x100000, BROKER_MAP_READ, &e), 0);
        assert_int_equal(container_map(c, fd, 1 * MiB, 2 * MiB, 0x400000, BROKER_MAP_READ | BROKER_MAP_WRITE, &e), 0);
        assert_int_equal(container_map_discardable(c, fd, 4 * MiB, 4 * MiB, 0x1000000, BROKER_MAP_READ, 2 * MiB, true,
                                                   &e), 0);
        assert_int_equal(container_set_dirty_tracking(c, true, &e), 0);

        char *text = encode(c);
        assert_int_equal(state_decode(text, &st, &e), 0);
        assert_string_equal(st.backend, "sim");
        assert_int_equal(st.id, c->id);
        assert_string_equal(st.owner, ":1.5");
        assert_int_equal(st.uid, 1000);
        assert_string_equal(st.label, "vm \"one\"");
        assert_int_equal(st.n_groups, 2);
        assert_int_equal(st.groups[0], 1);
        assert_int_equal(st.groups[1], 2);
        assert_int_equal(st.n_regions, 2); /* the daemon keeps one view per file and access mode */
        assert_true(st.dirty_tracking);
        assert_int_equal(st.n_discardable, 1);
        assert_int_equal(st.discardable[0].iova, 0x1000000);
        assert_int_equal(st.discardable[0].size, 4 * MiB);
        assert_int_equal(st.discardable[0].granule, 2 * MiB);
        assert_int_equal(st.discardable[0].offset, 4 * MiB);
        /* Two mappings and the two populated granules, in IOVA order. */
        assert_int_equal(st.n_mappings, 4);
        assert_int_equal(st.mappings[0].iova, 0x100000);
        assert_int_equal(st.mappings[1].iova, 0x400000);
        assert_int_equal(st.mappings[1].size, 2 * MiB);
        assert_int_equal(st.mappings[1].offset, 1 * MiB);
        assert_int_equal(st.mappings[1].flags, BROKER_MAP_READ | BROKER_MAP_WRITE);
        assert_int_equal(st.mappings[2].iova, 0x1000000);
        assert_int_equal(st.mappings[3].iova, 0x1200000);
        assert_int_equal(st.mappings[3].offset, 6 * MiB);

        container_state_done(&st);
        free(text);
        close(fd);
        broker_free(b);
}

static void test_large_values(void **state) {
        BrokerError e = BROKER_ERROR_INIT;
        ContainerState st = {};

        /* IOVAs beyond INT64_MAX are strings, since json-c's integers are int64. */
        assert_int_equal(state_decode("{\"version\":1,\"backend\":\"vfio-type1\",\"id\":3,\"owner\":\":1.1\",\"uid\":0,"
                                      "\"label\":\"\",\"groups\":[4],\"regions\":[{\"id\":0,\"flags\":3}],"
                                      "\"mappings\":[[\"0xfffffffffff00000\",1048576,0,0,3]]}", &st, &e), 0);
        assert_int_equal(st.mappings[0].iova, UINT64_C(0xfffffffffff00000));
        assert_int_equal(st.n_mappings, 1);
        container_state_done(&st);
}

static void expect_refused(const char *text, const char *why) {
        BrokerError e = BROKER_ERROR_INIT;
        ContainerState st = {};

        assert_int_equal(state_decode(text, &st, &e), -EINVAL);
        assert_int_equal(e.code, BROKER_ERROR_INVALID_ARGS);
        if (!strstr(e.message, why))
                fail_msg("\"%s\": expected \"%s\", got \"%s\"", text, why, e.message);
        /* Nothing half-parsed is handed back. */
        assert_null(st.owner);
        assert_null(st.mappings);
}

#define HEAD "{\"version\":1,\"backend\":\"sim\",\"id\":3,\"owner\":\":1.1\",\"uid\":0,\"label\":\"\","

static void test_refused(void **state) {
        expect_refused("", "not JSON");
        expect_refused("[1,2", "not JSON");
        expect_refused("{\"version\":2}", "another version");
        expect_refused("{\"version\":\"1\"}", "another version");
        expect_refused(HEAD "\"groups\":[],\"regions\":[]}", "malformed state");
        expect_refused(HEAD "\"groups\":[1,1],\"regions\":[],\"mappings\":[]}", "listed twice");
        expect_refused(HEAD "\"groups\":[-1],\"regions\":[],\"mappings\":[]}", "malformed group");
        expect_refused(HEAD "\"groups\":[],\"regions\":[{\"id\":4294967296,\"flags\":1}],\"mappings\":[]}",
                       "malformed memory region");
        expect_refused(HEAD "\"groups\":[],\"regions\":[],\"mappings\":[[0,4096,0,0]]}", "malformed mapping");
        expect_refused(HEAD "\"groups\":[],\"regions\":[],\"mappings\":[[0,4096,0,0,4]]}", "malformed mapping");
        expect_refused(HEAD "\"groups\":[],\"regions\":[],\"mappings\":[[0,4096,0,\"x\",1]]}", "malformed mapping");
        expect_refused(HEAD "\"groups\":[],\"regions\":[],\"mappings\":[],\"discardable\":{}}",
                       "malformed discardable");
        expect_refused(HEAD "\"groups\":[],\"regions\":[],\"mappings\":[],\"discardable\":[[0,4096,0,0,1]]}",
                       "malformed discardable region");
        expect_refused("{\"version\":1,\"backend\":\"sim\",\"id\":0,\"owner\":\":1.1\",\"uid\":0,\"label\":\"\","
                       "\"groups\":[],\"regions\":[],\"mappings\":[]}", "malformed state");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_large_values),
                cmocka_unit_test(test_refused),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
