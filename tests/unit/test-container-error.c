/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The one place where a backend's errno becomes a SPEC error (container-error.c): the errnos an
 * operation documents get their own error and wording, anything else is Kernel naming the operation
 * and the errno; and the paths through the logic on the sim backend that reach it. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend-sim.h"
#include "broker.h"
#include "config.h"
#include "container-private.h"

typedef struct Fixture {
        BrokerConfig *config;
        Broker *broker;
        Container *container;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        Backend *backend = NULL;

        assert_non_null(f);
        assert_int_equal(broker_config_new_default(&f->config), 0);
        assert_int_equal(backend_sim_new(f->config, &backend, NULL), 0);
        assert_int_equal(broker_new(NULL, backend, f->config, &f->broker), 0);
        assert_int_equal(broker_refresh_groups(f->broker), 0);
        assert_int_equal(container_new(f->broker, ":1.1", 1000, "test", &f->container, NULL), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        container_close(f->container);
        broker_free(f->broker);
        free(f);
        return 0;
}

/* Calls the helper with a fresh BrokerError, checks the returned errno and the code, and returns the
 * message (static storage, valid until the next call). */
static const char *word(Fixture *f, BackendOperation op, int error, const BackendErrorContext *ctx, int expect_r,
                        BrokerErrorCode expect_code) {
        static BrokerError e;

        e = BROKER_ERROR_INIT;
        assert_int_equal(container_backend_error(f->container, op, error, ctx, &e), expect_r);
        assert_int_equal(e.code, expect_code);
        assert_true(strlen(e.message) > 15);
        return e.message;
}

static void test_attach(void **state) {
        Fixture *f = *state;
        const BackendErrorContext g1 = { .group = 1 }, g6 = { .group = 6 };

        assert_non_null(strstr(word(f, BACKEND_OPERATION_ATTACH_GROUP, -ENOENT, &g1, -ENOENT,
                                    BROKER_ERROR_NO_SUCH_GROUP), "VFIO group 1"));
        assert_non_null(strstr(word(f, BACKEND_OPERATION_ATTACH_GROUP, -EBUSY, &g1, -EBUSY, BROKER_ERROR_BUSY),
                               "in use outside the broker"));
        /* EPERM: a group that reads as viable was refused by the IOMMU (Kernel, with the hint) ... */
        const char *m = word(f, BACKEND_OPERATION_ATTACH_GROUP, -EPERM, &g1, -EPERM, BROKER_ERROR_KERNEL);
        assert_non_null(strstr(m, "allow_unsafe_interrupts"));
        assert_non_null(strstr(m, "EPERM"));
        /* ... one that does not is NotViable (group 6 of the default sim is not viable). */
        assert_non_null(strstr(word(f, BACKEND_OPERATION_ATTACH_GROUP, -EPERM, &g6, -EPERM, BROKER_ERROR_NOT_VIABLE),
                               "vfio-pci"));
        assert_string_equal(word(f, BACKEND_OPERATION_ATTACH_GROUP, -EINVAL, &g1, -EINVAL, BROKER_ERROR_KERNEL),
                            "VFIO_GROUP_SET_CONTAINER for VFIO group 1 failed: EINVAL (Invalid argument)");

        assert_non_null(strstr(word(f, BACKEND_OPERATION_DETACH_GROUP, -EBUSY, &g1, -EBUSY, BROKER_ERROR_BUSY),
                               "Device fds of VFIO group 1 are still open"));
        assert_non_null(strstr(word(f, BACKEND_OPERATION_DETACH_GROUP, -EINVAL, &g1, -ENOENT,
                                    BROKER_ERROR_NO_SUCH_GROUP), "VFIO group 1"));
}

static void test_map(void **state) {
        Fixture *f = *state;
        const BackendErrorContext range = { .iova = 0x100000, .size = 0x100000 };
        const BackendOperation ops[] = { BACKEND_OPERATION_MAP_DMA, BACKEND_OPERATION_UPDATE_DMA_VADDR };

        for (size_t i = 0; i < ELEMENTSOF(ops); i++) {
                assert_non_null(strstr(word(f, ops[i], -EEXIST, &range, -EEXIST, BROKER_ERROR_OVERLAP),
                                       "[0x100000, 0x1fffff]"));
                assert_non_null(strstr(word(f, ops[i], -ENOSPC, &range, -EDQUOT, BROKER_ERROR_QUOTA_EXCEEDED),
                                       "DmaAvailable"));
                const char *m = word(f, ops[i], -ENOMEM, &range, -ENOMEM, BROKER_ERROR_KERNEL);
                assert_non_null(strstr(m, "RLIMIT_MEMLOCK"));
                assert_non_null(strstr(m, "ENOMEM"));
        }
        assert_string_equal(word(f, BACKEND_OPERATION_MAP_DMA, -EFAULT, &range, -EFAULT, BROKER_ERROR_KERNEL),
                            "VFIO_IOMMU_MAP_DMA of IOVA range [0x100000, 0x1fffff] failed: EFAULT (Bad address)");
        assert_string_equal(word(f, BACKEND_OPERATION_UNMAP_DMA, -EINVAL, &range, -EINVAL, BROKER_ERROR_KERNEL),
                            "VFIO_IOMMU_UNMAP_DMA of IOVA range [0x100000, 0x1fffff] failed: EINVAL (Invalid argument)");
}

static void test_devices(void **state) {
        Fixture *f = *state;
        const BackendErrorContext dev = { .group = 5, .device = "0000:00:05.0" };

        assert_non_null(strstr(word(f, BACKEND_OPERATION_GET_DEVICE_FD, -ENODEV, &dev, -ENODEV,
                                    BROKER_ERROR_NO_SUCH_DEVICE), "0000:00:05.0"));
        assert_string_equal(word(f, BACKEND_OPERATION_GET_DEVICE_FD, -EMFILE, &dev, -EMFILE, BROKER_ERROR_KERNEL),
                            "VFIO_GROUP_GET_DEVICE_FD(0000:00:05.0) on VFIO group 5 failed: EMFILE (Too many open files)");

        assert_non_null(strstr(word(f, BACKEND_OPERATION_GET_HOT_RESET_GROUPS, -ENODEV, &dev, -EOPNOTSUPP,
                                    BROKER_ERROR_NOT_SUPPORTED), "the kernel says ENODEV"));
        assert_non_null(strstr(word(f, BACKEND_OPERATION_GET_HOT_RESET_GROUPS, -ENOTTY, &dev, -EOPNOTSUPP,
                                    BROKER_ERROR_NOT_SUPPORTED), "the kernel says ENOTTY"));
        assert_non_null(strstr(word(f, BACKEND_OPERATION_PCI_HOT_RESET, -EBUSY, &dev, -EBUSY, BROKER_ERROR_BUSY),
                               "try again"));
        assert_string_equal(word(f, BACKEND_OPERATION_PCI_HOT_RESET, -EINVAL, &dev, -EINVAL, BROKER_ERROR_KERNEL),
                            "VFIO_DEVICE_PCI_HOT_RESET on 0000:00:05.0 failed: EINVAL (Invalid argument)");
}

/* Every operation: an errno it does not document is Kernel, naming the operation and the errno. */
static void test_unexpected(void **state) {
        Fixture *f = *state;
        const BackendErrorContext ctx = { .group = 2, .device = "0000:00:02.0", .iova = 0, .size = 4096 };

        for (BackendOperation op = 0; op < _BACKEND_OPERATION_MAX; op++) {
                const char *m = word(f, op, -EIO, &ctx, -EIO, BROKER_ERROR_KERNEL);
                assert_non_null(strstr(m, "failed: EIO (Input/output error)"));
                assert_true(strncmp(m, "VFIO_", 5) == 0 || op == BACKEND_OPERATION_NEW_CONTAINER);
        }
        /* Without a context, and without a BrokerError, nothing breaks. */
        assert_int_equal(container_backend_error(f->container, BACKEND_OPERATION_GET_IOMMU_INFO, -EIO, NULL, NULL),
                         -EIO);
        assert_int_equal(container_backend_error(f->container, BACKEND_OPERATION_MAP_DMA, -ENOSPC, NULL, NULL),
                         -EDQUOT);
        assert_non_null(strstr(word(f, BACKEND_OPERATION_NEW_CONTAINER, -EOPNOTSUPP, NULL, -EOPNOTSUPP,
                                    BROKER_ERROR_KERNEL), "vfio_iommu_type1"));

        /* The first, most specific error wins, as everywhere in the logic. */
        BrokerError e = BROKER_ERROR_INIT;
        assert_int_equal(broker_error_set(&e, BROKER_ERROR_NOT_MAPPED, "first"), -ESRCH);
        assert_int_equal(container_backend_error(f->container, BACKEND_OPERATION_UNMAP_DMA, -EIO, &ctx, &e), -EIO);
        assert_int_equal(e.code, BROKER_ERROR_NOT_MAPPED);
        assert_string_equal(e.message, "first");
}

/* Through the logic on the sim: a closed container's device fd keeps its group busy in the
 * (simulated) kernel, which the broker's own table cannot see; the backend's EBUSY is worded here. */
static void test_through_logic(void **state) {
        Fixture *f = *state;
        Container *other = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        int fd;

        assert_int_equal(container_new(f->broker, ":1.2", 1000, "other", &other, NULL), 0);
        assert_int_equal(container_attach_group(other, 5, NULL), 0);
        fd = container_open_device(other, "0000:00:05.0", NULL);
        assert_true(fd >= 0);
        container_close(other);

        assert_int_equal(container_attach_group(f->container, 5, &e), -EBUSY);
        assert_int_equal(e.code, BROKER_ERROR_BUSY);
        assert_non_null(strstr(e.message, "device fds of a closed container are still open"));
        assert_int_equal(f->container->n_groups, 0);

        close(fd);
        e = BROKER_ERROR_INIT;
        assert_int_equal(container_attach_group(f->container, 5, &e), 0);
        assert_int_equal(e.code, BROKER_ERROR_NONE);

        /* The sim's root-bus device has no bus reset: its ENODEV is NotSupported. */
        assert_int_equal(container_attach_group(f->container, 1, NULL), 0);
        assert_int_equal(container_hot_reset(f->container, "0000:00:01.0", &e), -EOPNOTSUPP);
        assert_int_equal(e.code, BROKER_ERROR_NOT_SUPPORTED);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_attach, setup, teardown),
                cmocka_unit_test_setup_teardown(test_map, setup, teardown),
                cmocka_unit_test_setup_teardown(test_devices, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unexpected, setup, teardown),
                cmocka_unit_test_setup_teardown(test_through_logic, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
