/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The owner-or-manage rule, without a bus: who needs which polkit action. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "caller.h"

static const PolkitCheck manage = { POLKIT_ACTION_MANAGE, NULL };
static const PolkitCheck attach = { POLKIT_ACTION_ATTACH_GROUP, NULL };

static void test_owner(void **state) {
        PolkitCheck c[2];

        /* The owner needs nothing for its own container, but attach-group for a group. */
        assert_int_equal(caller_checks_needed(":1.7", 1000, ":1.7", &manage, NULL, c), 0);
        assert_int_equal(caller_checks_needed(":1.7", 1000, ":1.7", &manage, &attach, c), 1);
        assert_string_equal(c[0].action, POLKIT_ACTION_ATTACH_GROUP);
}

static void test_other(void **state) {
        PolkitCheck c[2];

        /* Anybody else needs manage, even with the owner's uid: ownership is the connection, not the uid. */
        assert_int_equal(caller_checks_needed(":1.8", 1000, ":1.7", &manage, NULL, c), 1);
        assert_string_equal(c[0].action, POLKIT_ACTION_MANAGE);
        assert_int_equal(caller_checks_needed(":1.8", 1000, ":1.7", &manage, &attach, c), 2);
        assert_string_equal(c[0].action, POLKIT_ACTION_MANAGE);
        assert_string_equal(c[1].action, POLKIT_ACTION_ATTACH_GROUP);
        /* A caller without a name (cannot happen on the bus) is nobody's owner. */
        assert_int_equal(caller_checks_needed(NULL, 1000, ":1.7", &manage, NULL, c), 1);
}

static void test_root(void **state) {
        PolkitCheck c[2];

        assert_int_equal(caller_checks_needed(":1.9", 0, ":1.7", &manage, &attach, c), 0);
        assert_int_equal(caller_checks_needed(":1.7", 0, ":1.7", &manage, NULL, c), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_owner),
                cmocka_unit_test(test_other),
                cmocka_unit_test(test_root),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
