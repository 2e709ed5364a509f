/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vfio-user message validation: what the server accepts, what it refuses with an errno, and what is
 * malformed (fatal: the client is disconnected). */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vfio-user-message.h"

typedef struct Parsed {
        int r;
        VfioUserProblem p;
        VfioUserRequest req;
} Parsed;

static Parsed parse_with(uint16_t command, uint32_t flags, const void *payload, size_t size, size_t n_fds) {
        VfioUserHeader h = { .msg_id = 42, .command = command, .msg_size = (uint32_t) (sizeof(h) + size), .flags = flags };
        Parsed x = {};

        x.r = vfio_user_request_parse(&h, payload, size, n_fds, &x.req, &x.p);
        return x;
}

static Parsed parse(uint16_t command, const void *payload, size_t size, size_t n_fds) {
        return parse_with(command, 0, payload, size, n_fds);
}

#define assert_fatal(x) do { Parsed _x = (x); assert_int_equal(_x.r, -EBADMSG); assert_true(_x.p.fatal); \
                             assert_true(_x.p.reason[0] != 0); } while (0)
#define assert_refused(x, e) do { Parsed _x = (x); assert_int_equal(_x.r, -(e)); assert_false(_x.p.fatal); } while (0)

static void test_header(void **state) {
        VfioUserProblem p = {};
        VfioUserHeader h = { .command = VFIO_USER_DEVICE_RESET, .msg_size = 16 };

        assert_int_equal(vfio_user_header_check(&h, &p), 0);
        h.flags = VFIO_USER_FLAGS_NO_REPLY;
        assert_int_equal(vfio_user_header_check(&h, &p), 0);

        h.msg_size = 15;
        assert_int_equal(vfio_user_header_check(&h, &p), -EBADMSG);
        assert_true(p.fatal);
        h.msg_size = VFIO_USER_SERVER_MAX_MSG_SIZE + 1;
        assert_int_equal(vfio_user_header_check(&h, &p), -EBADMSG);
        h.msg_size = VFIO_USER_SERVER_MAX_MSG_SIZE;
        assert_int_equal(vfio_user_header_check(&h, &p), 0);
        h.flags = VFIO_USER_FLAGS_TYPE_REPLY;
        assert_int_equal(vfio_user_header_check(&h, &p), -EBADMSG);
        h.flags = VFIO_USER_FLAGS_ERROR;
        assert_int_equal(vfio_user_header_check(&h, &p), -EBADMSG);
        h.flags = UINT32_C(1) << 9;
        assert_int_equal(vfio_user_header_check(&h, &p), -EBADMSG);

        /* The payload must be what the header says, fds within the cap. */
        h = (VfioUserHeader) { .command = VFIO_USER_DEVICE_RESET, .msg_size = 20 };
        VfioUserRequest req;
        assert_int_equal(vfio_user_request_parse(&h, (const uint8_t *) "abcd", 3, 0, &req, &p), -EBADMSG);
        assert_fatal(parse(VFIO_USER_DEVICE_RESET, NULL, 0, VFIO_USER_SERVER_MAX_MSG_FDS + 1));
        assert_fatal(parse(VFIO_USER_DEVICE_RESET, "abcd", 4, 0));
        assert_fatal(parse(VFIO_USER_DEVICE_RESET, NULL, 0, 1));
        assert_int_equal(parse(VFIO_USER_DEVICE_RESET, NULL, 0, 0).r, 0);
}

static Parsed version(uint16_t major, uint16_t minor, const char *json, size_t n_fds) {
        uint8_t buf[8192];
        VfioUserVersion v = { major, minor };
        size_t n = sizeof(v);

        memcpy(buf, &v, sizeof(v));
        if (json) {
                memcpy(buf + n, json, strlen(json) + 1);
                n += strlen(json) + 1;
        }
        return parse(VFIO_USER_VERSION, buf, n, n_fds);
}

static void test_version(void **state) {
        Parsed x;

        /* QEMU's proposal. */
        x = version(0, 1, "{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,\"pgsizes\":4096,"
                          "\"max_dma_maps\":65535,\"migration\":{\"pgsize\":4096,\"max_bitmap_size\":1048576},"
                          "\"write_multiple\":true}}", 0);
        assert_int_equal(x.r, 0);
        assert_int_equal(x.req.version.capabilities.max_msg_fds, 16);
        assert_int_equal(x.req.version.capabilities.max_data_xfer_size, 1048576);
        assert_int_equal(x.req.version.capabilities.pgsizes, 4096);
        assert_int_equal(x.req.version.capabilities.max_dma_maps, 65535);
        assert_true(x.req.version.capabilities.write_multiple);

        /* No JSON at all, or no capabilities: the protocol's defaults. */
        x = version(0, 0, NULL, 0);
        assert_int_equal(x.r, 0);
        assert_int_equal(x.req.version.capabilities.max_msg_fds, 1);
        assert_int_equal(x.req.version.capabilities.max_data_xfer_size, 1048576);
        x = version(0, 9, "{}", 0);
        assert_int_equal(x.r, 0);
        assert_int_equal(x.req.version.minor, 9);
        /* Unknown capabilities are a later minor's: ignored. */
        assert_int_equal(version(0, 1, "{\"capabilities\":{\"future\":[1,2]}}", 0).r, 0);

        assert_fatal(version(1, 0, NULL, 0));
        assert_fatal(version(0, 1, NULL, 1));
        assert_fatal(parse(VFIO_USER_VERSION, "\0", 1, 0));
        assert_fatal(version(0, 1, "{", 0));
        assert_fatal(version(0, 1, "[]", 0));
        assert_fatal(version(0, 1, "{} {}", 0));
        assert_fatal(version(0, 1, "{\"capabilities\":3}", 0));
        assert_fatal(version(0, 1, "{\"capabilities\":{\"max_msg_fds\":\"16\"}}", 0));
        assert_fatal(version(0, 1, "{\"capabilities\":{\"max_msg_fds\":-1}}", 0));
        assert_fatal(version(0, 1, "{\"capabilities\":{\"max_data_xfer_size\":0}}", 0));
        assert_fatal(version(0, 1, "{\"capabilities\":{\"write_multiple\":1}}", 0));
        assert_fatal(version(0, 1, "{\"capabilities\":{\"twin_socket\":true}}", 0));
        /* Not NUL-terminated, or a NUL inside. */
        {
                uint8_t buf[16] = { 0, 0, 1, 0, '{', '}' };
                assert_fatal(parse(VFIO_USER_VERSION, buf, 6, 0));
                memcpy(buf + 4, "{}\0{}\0", 6);
                assert_fatal(parse(VFIO_USER_VERSION, buf, 10, 0));
        }
        /* Larger than the broker reads. */
        {
                char *big = malloc(VFIO_USER_SERVER_MAX_VERSION_DATA + 10);
                assert_non_null(big);
                memset(big, ' ', VFIO_USER_SERVER_MAX_VERSION_DATA + 9);
                big[0] = '{';
                big[VFIO_USER_SERVER_MAX_VERSION_DATA + 8] = '}';
                big[VFIO_USER_SERVER_MAX_VERSION_DATA + 9] = 0;
                assert_fatal(version(0, 1, big, 0));
                free(big);
        }
}

static void test_version_reply(void **state) {
        char *s = vfio_user_version_reply_json(UINT64_C(0x40201000), 65535);

        assert_non_null(s);
        assert_string_equal(s, "{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,"
                               "\"pgsizes\":1075843072,\"max_dma_maps\":65535}}");
        free(s);
}

static void test_dma_map(void **state) {
        VfioUserDmaMap m = { sizeof(m), 3, 0, 0x100000, 0x200000 };
        Parsed x;

        x = parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 1);
        assert_int_equal(x.r, 0);
        assert_int_equal(x.req.dma_map.address, 0x100000);
        assert_int_equal(x.req.dma_map.size, 0x200000);
        assert_int_equal(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 0).r, 0);

        assert_fatal(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 2));
        assert_fatal(parse(VFIO_USER_DMA_MAP, &m, sizeof(m) - 1, 1));
        m.argsz = 64;
        assert_fatal(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 1));
        m.argsz = 24;
        assert_fatal(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 1));
        m.argsz = sizeof(m);

        m.flags = 0;
        assert_refused(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 1), EINVAL);
        m.flags = 4;
        assert_refused(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 1), EINVAL);
        m.flags = 1;
        m.size = 0;
        assert_refused(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 1), EINVAL);
        m.size = 0x2000;
        m.address = UINT64_MAX - 0xfff;
        assert_refused(parse(VFIO_USER_DMA_MAP, &m, sizeof(m), 1), EINVAL);
}

static void test_dma_unmap(void **state) {
        VfioUserDmaUnmap u = { sizeof(u), 0, 0x100000, 0x200000 };

        assert_int_equal(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0).r, 0);
        u.argsz = 100; /* room for a larger reply is fine */
        assert_int_equal(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0).r, 0);
        u.argsz = 16;
        assert_fatal(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0));
        u.argsz = sizeof(u);
        assert_fatal(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 1));
        assert_fatal(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u) + 8, 0));

        u.flags = VFIO_USER_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
        assert_refused(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0), EOPNOTSUPP);
        u.flags = 8;
        assert_refused(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0), EINVAL);
        u.flags = VFIO_USER_DMA_UNMAP_FLAG_ALL;
        assert_refused(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0), EINVAL);
        u.address = u.size = 0;
        assert_int_equal(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0).r, 0);
        u.flags = 0;
        assert_refused(parse(VFIO_USER_DMA_UNMAP, &u, sizeof(u), 0), EINVAL);
}

static void test_infos(void **state) {
        VfioUserDeviceInfo d = { sizeof(d) };
        VfioUserRegionInfo r = { sizeof(r), 0, 7 };
        VfioUserIrqInfo i = { sizeof(i), 0, 0 };
        Parsed x;

        assert_int_equal(parse(VFIO_USER_DEVICE_GET_INFO, &d, sizeof(d), 0).r, 0);
        x = parse(VFIO_USER_DEVICE_GET_REGION_INFO, &r, sizeof(r), 0);
        assert_int_equal(x.r, 0);
        assert_int_equal(x.req.region_info.index, 7);
        assert_int_equal(parse(VFIO_USER_DEVICE_GET_IRQ_INFO, &i, sizeof(i), 0).r, 0);

        d.argsz = 8;
        assert_fatal(parse(VFIO_USER_DEVICE_GET_INFO, &d, sizeof(d), 0));
        r.argsz = 16;
        assert_fatal(parse(VFIO_USER_DEVICE_GET_REGION_INFO, &r, sizeof(r), 0));
        r.argsz = 4096; /* QEMU asks again with room for the capabilities */
        assert_int_equal(parse(VFIO_USER_DEVICE_GET_REGION_INFO, &r, sizeof(r), 0).r, 0);
        assert_fatal(parse(VFIO_USER_DEVICE_GET_REGION_INFO, &r, sizeof(r), 1));
        assert_fatal(parse(VFIO_USER_DEVICE_GET_IRQ_INFO, &i, sizeof(i) - 4, 0));
}

static void test_set_irqs(void **state) {
        uint8_t buf[64];
        VfioUserIrqSet s = { sizeof(s), VFIO_USER_IRQ_SET_DATA_EVENTFD | VFIO_USER_IRQ_SET_ACTION_TRIGGER, 0, 0, 1 };
        Parsed x;

        assert_int_equal(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 1).r, 0);
        /* No eventfds: de-assign, as QEMU sends it. */
        assert_int_equal(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 0).r, 0);
        assert_fatal(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 2));
        s.argsz = 24;
        assert_fatal(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 1));

        /* DATA_BOOL: count bytes follow, argsz counts them. */
        s = (VfioUserIrqSet) { sizeof(s) + 3, VFIO_USER_IRQ_SET_DATA_BOOL | VFIO_USER_IRQ_SET_ACTION_MASK, 1, 0, 3 };
        memcpy(buf, &s, sizeof(s));
        memcpy(buf + sizeof(s), "\1\0\1", 3);
        x = parse(VFIO_USER_DEVICE_SET_IRQS, buf, sizeof(s) + 3, 0);
        assert_int_equal(x.r, 0);
        assert_non_null(x.req.irq_set.bools);
        assert_int_equal(x.req.irq_set.bools[2], 1);
        assert_fatal(parse(VFIO_USER_DEVICE_SET_IRQS, buf, sizeof(s) + 2, 0));
        assert_fatal(parse(VFIO_USER_DEVICE_SET_IRQS, buf, sizeof(s) + 3, 1));

        /* Disabling an index: DATA_NONE|TRIGGER with count 0. */
        s = (VfioUserIrqSet) { sizeof(s), VFIO_USER_IRQ_SET_DATA_NONE | VFIO_USER_IRQ_SET_ACTION_TRIGGER, 0, 0, 0 };
        assert_int_equal(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 0).r, 0);
        s.flags = VFIO_USER_IRQ_SET_DATA_NONE | VFIO_USER_IRQ_SET_ACTION_MASK;
        assert_refused(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 0), EINVAL);
        s.count = 1;
        s.flags = VFIO_USER_IRQ_SET_DATA_NONE | VFIO_USER_IRQ_SET_DATA_EVENTFD | VFIO_USER_IRQ_SET_ACTION_TRIGGER;
        assert_refused(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 0), EINVAL);
        s.flags = VFIO_USER_IRQ_SET_DATA_NONE;
        assert_refused(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 0), EINVAL);
        s.flags = VFIO_USER_IRQ_SET_DATA_NONE | VFIO_USER_IRQ_SET_ACTION_TRIGGER | (UINT32_C(1) << 8);
        assert_refused(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 0), EINVAL);
        s.flags = VFIO_USER_IRQ_SET_DATA_NONE | VFIO_USER_IRQ_SET_ACTION_TRIGGER;
        s.start = UINT32_MAX;
        assert_refused(parse(VFIO_USER_DEVICE_SET_IRQS, &s, sizeof(s), 0), EINVAL);
}

static void test_region_access(void **state) {
        uint8_t buf[64];
        VfioUserRegionAccess a = { 0x80, 0, 8 };
        Parsed x;

        x = parse(VFIO_USER_REGION_READ, &a, sizeof(a), 0);
        assert_int_equal(x.r, 0);
        assert_null(x.req.region.data);
        assert_fatal(parse(VFIO_USER_REGION_READ, buf, sizeof(a) + 8, 0));

        memcpy(buf, &a, sizeof(a));
        memcpy(buf + sizeof(a), "12345678", 8);
        x = parse_with(VFIO_USER_REGION_WRITE, VFIO_USER_FLAGS_NO_REPLY, buf, sizeof(a) + 8, 0);
        assert_int_equal(x.r, 0);
        assert_memory_equal(x.req.region.data, "12345678", 8);
        assert_fatal(parse(VFIO_USER_REGION_WRITE, buf, sizeof(a) + 7, 0));
        assert_fatal(parse(VFIO_USER_REGION_WRITE, buf, sizeof(a) + 8, 1));
        assert_fatal(parse(VFIO_USER_REGION_WRITE, buf, sizeof(a) - 1, 0));

        a.count = 0;
        assert_refused(parse(VFIO_USER_REGION_READ, &a, sizeof(a), 0), EINVAL);
        a.count = (uint32_t) VFIO_USER_SERVER_MAX_DATA_XFER_SIZE + 1;
        assert_refused(parse(VFIO_USER_REGION_READ, &a, sizeof(a), 0), EINVAL);
        a.count = 8;
        a.offset = UINT64_MAX - 3;
        assert_refused(parse(VFIO_USER_REGION_READ, &a, sizeof(a), 0), EINVAL);
}

static void test_commands(void **state) {
        /* Server-to-client commands sent to the server: malformed. */
        assert_fatal(parse(VFIO_USER_DMA_READ, "0123456789abcdef", 16, 0));
        assert_fatal(parse(VFIO_USER_DMA_WRITE, "0123456789abcdef", 16, 0));
        /* Well framed, not served: refused, the session goes on. */
        assert_refused(parse(99, NULL, 0, 0), EOPNOTSUPP);
        assert_refused(parse(VFIO_USER_DEVICE_GET_REGION_IO_FDS, "0123456789abcdef", 16, 0), EOPNOTSUPP);
        assert_refused(parse(VFIO_USER_REGION_WRITE_MULTI, "01234567", 8, 0), EOPNOTSUPP);
        assert_refused(parse(VFIO_USER_DEVICE_FEATURE, "0123", 4, 2), EOPNOTSUPP);
        assert_string_equal(vfio_user_command_name(VFIO_USER_DMA_MAP), "DMA_MAP");
        assert_string_equal(vfio_user_command_name(14), "unknown");
        assert_string_equal(vfio_user_command_name(60000), "unknown");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_header),
                cmocka_unit_test(test_version),
                cmocka_unit_test(test_version_reply),
                cmocka_unit_test(test_dma_map),
                cmocka_unit_test(test_dma_unmap),
                cmocka_unit_test(test_infos),
                cmocka_unit_test(test_set_irqs),
                cmocka_unit_test(test_region_access),
                cmocka_unit_test(test_commands),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
