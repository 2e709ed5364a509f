/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* PCI hot reset on the sim backend, with a topology (meson.build) where groups 3 and 4 share PCI
 * bus 03, group 2 is alone on bus 02 and group 1 sits on the root bus: the broker lends the kernel
 * the fds of every group the reset touches only when the caller's own containers hold them all, and
 * otherwise names the groups in the way. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <vfio-broker/vfio-broker.h>

static vfio_broker *b, *other;
static vfio_broker_container *c;

static int setup(void **state) {
        if (vfio_broker_open(&b) < 0 || vfio_broker_open(&other) < 0 || vfio_broker_container_new(b, "reset", &c) < 0)
                return -1;
        return 0;
}

static int teardown(void **state) {
        vfio_broker_container_close(c);
        vfio_broker_unref(b);
        vfio_broker_unref(other);
        return 0;
}

static void test_not_resettable(void **state) {
        assert_int_equal(vfio_broker_container_attach_group(c, 1), 0);
        assert_int_equal(vfio_broker_container_hot_reset(c, "0000:00:01.0"), -EOPNOTSUPP);
        assert_string_equal(vfio_broker_error_name(b), "org.freedesktop.DBus.Error.NotSupported");
        /* Devices of groups that are not attached here, or not at all. */
        assert_int_equal(vfio_broker_container_hot_reset(c, "0000:02:00.0"), -ENODEV);
        assert_non_null(strstr(vfio_broker_error_message(b), "AttachGroup(2)"));
        assert_int_equal(vfio_broker_container_hot_reset(c, "0000:09:00.0"), -ENODEV);
}

static void test_alone_on_its_bus(void **state) {
        assert_int_equal(vfio_broker_container_attach_group(c, 2), 0);
        assert_int_equal(vfio_broker_container_hot_reset(c, "0000:02:00.0"), 0);
}

static void test_blocked_by_groups(void **state) {
        vfio_broker_container *theirs, *mine;

        assert_int_equal(vfio_broker_container_attach_group(c, 3), 0);
        /* Group 4 shares bus 03 and is free. */
        assert_int_equal(vfio_broker_container_hot_reset(c, "0000:03:00.0"), -EBUSY);
        assert_non_null(strstr(vfio_broker_error_message(b), "4 (not attached to a container)"));

        /* Another VMM holds group 4: its device must not be reset under it. */
        assert_int_equal(vfio_broker_container_new(other, "other VM", &theirs), 0);
        assert_int_equal(vfio_broker_container_attach_group(theirs, 4), 0);
        assert_int_equal(vfio_broker_container_hot_reset(c, "0000:03:00.0"), -EBUSY);
        assert_non_null(strstr(vfio_broker_error_message(b), "4 (attached to another owner's container)"));
        assert_int_equal(vfio_broker_container_close(theirs), 0);

        /* The caller's own second container holds it: the reset spans both. */
        assert_int_equal(vfio_broker_container_new(b, "second", &mine), 0);
        assert_int_equal(vfio_broker_container_attach_group(mine, 4), 0);
        assert_int_equal(vfio_broker_container_hot_reset(c, "0000:03:00.0"), 0);
        assert_int_equal(vfio_broker_container_hot_reset(mine, "0000:03:00.1"), 0);
        assert_int_equal(vfio_broker_container_close(mine), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_not_resettable),
                cmocka_unit_test(test_alone_on_its_bus),
                cmocka_unit_test(test_blocked_by_groups),
        };
        return cmocka_run_group_tests_name("hot-reset", tests, setup, teardown);
}
