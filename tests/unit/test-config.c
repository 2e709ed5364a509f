/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

static void test_defaults(void **state) {
        BrokerConfig *c = NULL;

        assert_int_equal(broker_config_new_default(&c), 0);
        assert_int_equal(c->sim.n_groups, 6);
        assert_int_equal(c->sim.groups[4].id, 5);
        assert_string_equal(c->sim.groups[4].devices[1], "0000:00:05.1");
        assert_false(c->sim.groups[5].viable);
        assert_int_equal(c->sim.n_iova_ranges, 2);
        assert_int_equal(c->sim.page_sizes, 0x40201000);
        assert_int_equal(c->sim.dma_entry_limit, 65535);
        assert_int_equal(c->default_limits.containers, 16);
        /* Half the host's memory. */
        assert_int_equal(c->default_limits.pinned_bytes,
                         (uint64_t) sysconf(_SC_PHYS_PAGES) * (uint64_t) sysconf(_SC_PAGESIZE) / 2);
        /* A quarter of the daemon's fds, and a sixteenth of its 128 TiB of address space. */
        struct rlimit rl;
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= 64)
                assert_int_equal(c->default_limits.fds, rl.rlim_cur / 4);
        assert_int_equal(c->default_limits.address_space, UINT64_C(1) << 43);
        assert_int_equal(c->reserved_fds, UINT64_MAX); /* quota.c's default, computed at each charge */
        broker_config_free(c);

        /* An empty object is the defaults too. */
        assert_int_equal(broker_config_parse("{}", &c, NULL), 0);
        assert_int_equal(c->sim.n_groups, 6);
        broker_config_free(c);
}

static void test_full(void **state) {
        BrokerConfig *c = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        const char *text =
                "{ \"sim\": { \"groups\": [ { \"id\": 10, \"devices\": [\"0000:03:00.0\", \"0000:03:00.1\"] },"
                "                         { \"id\": 11, \"devices\": [\"0000:04:00.0\"], \"viable\": false } ],"
                "            \"iova_ranges\": [ { \"first\": 0, \"last\": \"0xffffffff\" } ],"
                "            \"page_sizes\": \"0x1000\", \"dma_entry_limit\": 100 },"
                "  \"limits\": { \"default\": { \"containers\": 2, \"pinned_bytes\": \"0x40000000\" },"
                "               \"users\": { \"alice\": { \"mappings\": 10, \"fds\": 5 },"
                "                          \"1000\": { \"pinned_bytes\": \"unlimited\", \"address_space\": \"0x10000000000\" } },"
                "               \"groups\": { \"kvm\": { \"containers\": 8 } }, \"reserved_fds\": \"0x400\" } }";

        assert_int_equal(broker_config_parse(text, &c, &e), 0);
        assert_int_equal(c->sim.n_groups, 2);
        assert_int_equal(c->sim.groups[0].id, 10);
        assert_true(c->sim.groups[0].viable);
        assert_false(c->sim.groups[1].viable);
        assert_int_equal(c->sim.iova_ranges[0].last, 0xffffffff);
        assert_int_equal(c->sim.page_sizes, 0x1000);
        assert_int_equal(c->sim.dma_entry_limit, 100);
        assert_int_equal(c->default_limits.containers, 2);
        assert_int_equal(c->n_user_limits, 2);
        assert_string_equal(c->user_limits[0].name, "alice");
        assert_int_equal(c->user_limits[0].limits.mappings, 10);
        assert_int_equal(c->user_limits[0].limits.containers, 2); /* inherited */
        assert_int_equal(c->user_limits[1].limits.pinned_bytes, UINT64_MAX);
        assert_int_equal(c->user_limits[0].limits.fds, 5);
        assert_int_equal(c->user_limits[0].limits.address_space, UINT64_C(1) << 43); /* inherited */
        assert_int_equal(c->user_limits[1].limits.address_space, UINT64_C(0x10000000000));
        assert_int_equal(c->group_limits[0].limits.containers, 8);
        assert_int_equal(c->reserved_fds, 1024);
        broker_config_free(c);
}

static void expect_error(const char *text, const char *key) {
        BrokerConfig *c = NULL;
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(broker_config_parse(text, &c, &e), -EINVAL);
        assert_null(c);
        assert_int_equal(e.code, BROKER_ERROR_INVALID_ARGS);
        if (!strstr(e.message, key))
                fail_msg("error for %s does not name \"%s\": %s", text, key, e.message);
}

static void test_errors(void **state) {
        expect_error("{ \"sim\": 1 }", "sim");
        expect_error("{ \"simm\": {} }", "simm");
        expect_error("[]", "top level");
        expect_error("{ ", "JSON");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"a\"], \"viabl\": true } ] } }", "viabl");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"a\"], \"viable\": 1 } ] } }", "sim.groups[0].viable");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [] } ] } }", "sim.groups[0].devices");
        expect_error("{ \"sim\": { \"groups\": [ { \"devices\": [\"a\"] } ] } }", "sim.groups[0].id");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"a\"] }, { \"id\": 1, \"devices\": [\"b\"] } ] } }",
                     "sim.groups[1].id");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"a\"] }, { \"id\": 2, \"devices\": [\"a\"] } ] } }",
                     "sim.groups[1].devices[0]");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"a/b\"] } ] } }", "devices[0]");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": -1, \"devices\": [\"a\"] } ] } }", "sim.groups[0].id");
        expect_error("{ \"sim\": { \"iova_ranges\": [ { \"first\": 10, \"last\": 5 } ] } }", "sim.iova_ranges[0]");
        expect_error("{ \"sim\": { \"iova_ranges\": [ { \"first\": 0, \"last\": 100 }, { \"first\": 50, \"last\": 200 } ] } }",
                     "sim.iova_ranges[1]");
        expect_error("{ \"sim\": { \"iova_ranges\": [] } }", "sim.iova_ranges");
        expect_error("{ \"sim\": { \"page_sizes\": 512 } }", "sim.page_sizes");
        expect_error("{ \"sim\": { \"page_sizes\": \"lots\" } }", "sim.page_sizes");
        expect_error("{ \"sim\": { \"dma_entry_limit\": 0 } }", "sim.dma_entry_limit");
        expect_error("{ \"limits\": { \"default\": { \"containers\": -3 } } }", "limits.default.containers");
        expect_error("{ \"limits\": { \"default\": { \"pins\": 3 } } }", "pins");
        expect_error("{ \"limits\": { \"users\": { \"bob\": { \"mappings\": true } } } }", "limits.users.bob.mappings");
        expect_error("{ \"limits\": { \"default\": { \"fds\": -1 } } }", "limits.default.fds");
        expect_error("{ \"limits\": { \"default\": { \"address_space\": \"lots\" } } }", "limits.default.address_space");
        expect_error("{ \"limits\": { \"groups\": [] } }", "limits.groups");
        expect_error("{ \"limits\": { \"reserved_fds\": -1 } }", "limits.reserved_fds");
        expect_error("{ \"limits\": { \"reserved_fds\": \"some\" } }", "limits.reserved_fds");
        expect_error("{ \"limits\": { \"default\": { \"reserved_fds\": 10 } } }", "reserved_fds");
}

/* Syntax errors say where, in lines and columns (issue 15: "not valid JSON: continue (at byte 54)"). */
static void test_syntax_position(void **state) {
        expect_error("{\n  \"limits\": {\n    \"default\": { \"containers\": 2, }\n  }\n}\n",
                     "not valid JSON at line 3, column 35: a comma before '}' (JSON has no trailing commas)");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"a\",] } ] } }",
                     "line 1, column 51: a comma before ']'");
        expect_error("{ \"limits\": {\n  \"default\": {}\n", "the text ends at line 3, column 1");
        expect_error("{\n\t\"limits\": {} } x", "line 2, column 17: unexpected 'x'");
        expect_error("{ \"limits\": {} } // why", "line 1, column 18: JSON has no comments");
        expect_error("{ \"limits\": /* why */ {} }", "line 1, column 13: JSON has no comments");
        expect_error("{ 'limits': {} }", "line 1, column 3: strings and keys take double quotes");
        /* Columns count characters, not bytes. */
        expect_error("{ \"limits\": { \"users\": { \"j\u00f6rg\": {}, \"\u00e5sa\": { \"mappings\": 1,, } } } }",
                     "line 1, column 61: quoted object property name expected");
}

/* json-c keeps the last of two equal keys silently; the broker refuses them, naming the key and both
 * places. */
static void test_duplicate_keys(void **state) {
        expect_error("{\n  \"limits\": { \"default\": { \"containers\": 2,\n                             \"containers\": 3 } }\n}",
                     "limits.default: key \"containers\" is given twice, at line 2, column 28 and at line 3, column 30");
        expect_error("{ \"sim\": {}, \"limits\": {}, \"sim\": {} }", "(top level): key \"sim\" is given twice");
        expect_error("{ \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"a\"] }, "
                     "{ \"id\": 2, \"devices\": [\"b\"], \"\\u0069d\": 3 } ] } }",
                     "sim.groups[1]: key \"id\" is given twice");
        expect_error("{ \"limits\": { \"users\": { \"alice\": {}, \"bob\": {}, \"alice\": { \"mappings\": 1 } } } }",
                     "limits.users: key \"alice\" is given twice");

        /* The same key in different objects, and strings that look like keys, are fine. */
        BrokerConfig *c = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        assert_int_equal(broker_config_parse("{ \"limits\": { \"users\": { \"a\": { \"mappings\": 1 }, "
                                             "\"b\": { \"mappings\": 2 } }, \"groups\": { \"a\": {} } },"
                                             " \"sim\": { \"groups\": [ { \"id\": 1, \"devices\": [\"id\", \"x{\\\"id\"] },"
                                             " { \"id\": 2, \"devices\": [\"y\"] } ] } }", &c, &e), 0);
        assert_int_equal(c->n_user_limits, 2);
        assert_string_equal(c->sim.groups[0].devices[1], "x{\"id");
        broker_config_free(c);
}

static void test_load(void **state) {
        BrokerConfig *c = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        char path[] = "/tmp/test-config-XXXXXX";
        int fd = mkstemp(path);
        const char *text = "{ \"sim\": { \"dma_entry_limit\": 7 } }";

        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
        assert_int_equal(broker_config_load(path, false, &c, &e), 1); /* read from the file */
        assert_int_equal(c->sim.dma_entry_limit, 7);
        broker_config_free(c);
        unlink(path);

        /* Missing: defaults only when allowed, and the caller learns that nothing was read. */
        assert_int_equal(broker_config_load(path, true, &c, &e), 0);
        assert_int_equal(c->sim.n_groups, 6);
        broker_config_free(c);
        c = NULL;
        assert_true(broker_config_load(path, false, &c, &e) < 0);
        assert_non_null(strstr(e.message, path));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_full),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_syntax_position),
                cmocka_unit_test(test_duplicate_keys),
                cmocka_unit_test(test_load),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
