/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* With the sim's dma_entry_limit set to 4 (as the kernel's vfio_iommu_type1 dma_entry_limit would
 * be): the fifth mapping is QuotaExceeded with a clear message, changes nothing, and room comes
 * back after an Unmap. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "client-util.h"
#include "macro.h"

static void test_dma_entry_limit(void **state) {
        sd_bus *bus = test_bus_open();
        TestGroup groups[16];
        size_t n = test_list_groups(bus, groups, 16);
        _cleanup_free_ char *path = test_create_container(bus, "limit");
        _cleanup_close_ int ram = test_memfd(1 << 20);
        const char *e;

        assert_true(n > 0);
        test_call_ok(bus, path, CONTAINER_IFACE, "AttachGroup", NULL, "u", groups[0].id);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "DmaAvailable"), 4);
        for (uint64_t i = 0; i < 4; i++)
                test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, i * 4096, UINT64_C(4096),
                             0x100000 + i * 0x10000, UINT32_C(3));
        e = test_call(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0x10000), UINT64_C(4096),
                      UINT64_C(0x900000), UINT32_C(3));
        assert_non_null(e);
        assert_string_equal(e, "org.vfiobroker.Broker1.Error.QuotaExceeded");
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 4);
        assert_int_equal(test_get_u64(bus, path, CONTAINER_IFACE, "MappedBytes"), 4 * 4096);
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "DmaAvailable"), 0);

        test_call_ok(bus, path, CONTAINER_IFACE, "Unmap", NULL, "tt", UINT64_C(0x100000), UINT64_C(4096));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "DmaAvailable"), 1);
        test_call_ok(bus, path, CONTAINER_IFACE, "Map", NULL, "htttu", ram, UINT64_C(0x10000), UINT64_C(4096),
                     UINT64_C(0x900000), UINT32_C(3));
        assert_int_equal(test_get_u32(bus, path, CONTAINER_IFACE, "Mappings"), 4);
        test_call_ok(bus, path, CONTAINER_IFACE, "Close", NULL, "");
        sd_bus_flush_close_unref(bus);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dma_entry_limit),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
