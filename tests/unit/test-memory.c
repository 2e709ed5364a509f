/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "memory.h"

static int new_memfd(size_t size) {
        int fd = memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        return fd;
}

static int reopen(int fd, int flags) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        int r = open(path, flags | O_CLOEXEC);
        assert_true(r >= 0);
        return r;
}

static void expect_fd_error(int fd, uint32_t flags, BrokerErrorCode code) {
        BrokerError e = BROKER_ERROR_INIT;
        MemoryFileInfo info;
        assert_true(memory_check_fd(fd, flags, &info, &e) < 0);
        assert_int_equal(e.code, code);
        assert_true(strlen(e.message) > 10);
}

static void test_fd_types(void **state) {
        MemoryFileInfo info;
        int p[2], s[2];
        int memfd = new_memfd(1 << 20), ro = reopen(memfd, O_RDONLY), wo = reopen(memfd, O_WRONLY);
        int opath = reopen(memfd, O_PATH), dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);

        assert_int_equal(memory_check_fd(memfd, 3, &info, NULL), 0);
        assert_int_equal(info.file_size, 1 << 20);
        assert_int_equal(info.page_size, (uint64_t) sysconf(_SC_PAGESIZE));
        assert_false(info.hugetlbfs);
        assert_true(info.writable);
        assert_int_equal(memory_check_fd(ro, BROKER_MAP_READ, &info, NULL), 0);
        assert_false(info.writable);

        expect_fd_error(ro, BROKER_MAP_WRITE, BROKER_ERROR_BAD_MEMORY);
        expect_fd_error(ro, 3, BROKER_ERROR_BAD_MEMORY);
        expect_fd_error(wo, BROKER_MAP_READ, BROKER_ERROR_BAD_MEMORY);
        expect_fd_error(opath, BROKER_MAP_READ, BROKER_ERROR_BAD_MEMORY);
        expect_fd_error(dir, BROKER_MAP_READ, BROKER_ERROR_BAD_MEMORY);
        expect_fd_error(null, BROKER_MAP_READ, BROKER_ERROR_BAD_MEMORY);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        expect_fd_error(p[0], BROKER_MAP_READ, BROKER_ERROR_BAD_MEMORY);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
        expect_fd_error(s[0], BROKER_MAP_READ, BROKER_ERROR_BAD_MEMORY);
        expect_fd_error(-1, BROKER_MAP_READ, BROKER_ERROR_BAD_MEMORY);
        expect_fd_error(memfd, 0, BROKER_ERROR_INVALID_ARGS);
        expect_fd_error(memfd, 4, BROKER_ERROR_INVALID_ARGS);
        expect_fd_error(memfd, 7, BROKER_ERROR_INVALID_ARGS);

        /* A regular file on disk (tmpfs or not) is fine. */
        char tmpl[] = "/tmp/test-memory-XXXXXX";
        int reg = mkostemp(tmpl, O_CLOEXEC);
        assert_true(reg >= 0);
        unlink(tmpl);
        assert_int_equal(ftruncate(reg, 8192), 0);
        assert_int_equal(memory_check_fd(reg, 3, &info, NULL), 0);

        close(reg); close(memfd); close(ro); close(wo); close(opath); close(dir); close(null);
        close(p[0]); close(p[1]); close(s[0]); close(s[1]);
}

static void test_ranges(void **state) {
        MemoryFileInfo info = { .file_size = 1 << 20, .page_size = 4096 };
        BrokerError e = BROKER_ERROR_INIT;

        assert_int_equal(memory_check_range(&info, 0, 1 << 20, NULL), 0);
        assert_int_equal(memory_check_range(&info, 4096, 4096, NULL), 0);

        assert_true(memory_check_range(&info, 0, 0, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_INVALID_ARGS);
        e = BROKER_ERROR_INIT;
        assert_true(memory_check_range(&info, 100, 4096, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_UNALIGNED);
        e = BROKER_ERROR_INIT;
        assert_true(memory_check_range(&info, 0, 4097, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_UNALIGNED);
        e = BROKER_ERROR_INIT;
        assert_true(memory_check_range(&info, 4096, 1 << 20, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_OUT_OF_RANGE);
        e = BROKER_ERROR_INIT;
        assert_true(memory_check_range(&info, UINT64_MAX - 4095, 8192, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_OUT_OF_RANGE);

        info.page_size = 2 << 20;
        info.hugetlbfs = true;
        e = BROKER_ERROR_INIT;
        assert_true(memory_check_range(&info, 4096, 2 << 20, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_UNALIGNED);
        assert_non_null(strstr(e.message, "huge page"));
}

static void test_pool(void **state) {
        MemoryPool *pool = memory_pool_new();
        int a = new_memfd(1 << 20), b = new_memfd(1 << 20);
        int a_ro = reopen(a, O_RDONLY);
        MemoryFileInfo ia, ib, ia_ro;
        MemoryRegion *r1, *r2, *r3, *r4, *r5;
        uint64_t v1, v2, v3, v4, v5;

        assert_non_null(pool);
        assert_int_equal(memory_check_fd(a, 3, &ia, NULL), 0);
        assert_int_equal(memory_check_fd(b, 3, &ib, NULL), 0);
        assert_int_equal(memory_check_fd(a_ro, 1, &ia_ro, NULL), 0);

        /* Read-only first: a region with PROT_READ. */
        assert_int_equal(memory_pool_acquire(pool, a_ro, &ia_ro, 0, 4096, 1, &r1, &v1, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 1);
        /* The same file for writing needs a new, writable region... */
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 8192, 4096, 3, &r2, &v2, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 2);
        assert_ptr_not_equal(r1, r2);
        /* ... which then serves reads too. */
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 4096, 4096, 1, &r3, &v3, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 2);
        assert_true(r3 == r1 || r3 == r2);
        /* Another file, another region. */
        assert_int_equal(memory_pool_acquire(pool, b, &ib, 0, 1 << 20, 3, &r4, &v4, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 3);

        /* The daemon's address really is the file at that offset. */
        assert_int_equal(pwrite(a, "broker", 6, 8192), 6);
        assert_memory_equal((const void *) (uintptr_t) v2, "broker", 6);
        assert_int_equal(pwrite(a, "pinned", 6, 4096), 6);
        assert_memory_equal((const void *) (uintptr_t) v3, "pinned", 6);

        /* The file grew: a request beyond the first mapping gets a region that covers it. */
        assert_int_equal(ftruncate(a, 4 << 20), 0);
        assert_int_equal(memory_check_fd(a, 3, &ia, NULL), 0);
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 3 << 20, 4096, 3, &r5, &v5, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 4);
        assert_int_equal(pwrite(a, "grown", 5, 3 << 20), 5);
        assert_memory_equal((const void *) (uintptr_t) v5, "grown", 5);

        memory_pool_release(pool, r1);
        memory_pool_release(pool, r2);
        memory_pool_release(pool, r3);
        assert_int_equal(memory_pool_size(pool), 2);
        memory_pool_release(pool, r4);
        memory_pool_release(pool, r5);
        assert_int_equal(memory_pool_size(pool), 0);
        memory_pool_free(pool);
        close(a); close(b); close(a_ro);
}

static void test_sealed(void **state) {
        MemoryPool *pool = memory_pool_new();
        int fd = new_memfd(1 << 16);
        BrokerError e = BROKER_ERROR_INIT;
        MemoryFileInfo info;
        MemoryRegion *r;
        uint64_t v;

        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), 0);
        assert_int_equal(memory_check_fd(fd, 3, &info, NULL), 0);
        assert_true(memory_pool_acquire(pool, fd, &info, 0, 4096, 3, &r, &v, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_BAD_MEMORY);
        assert_int_equal(memory_pool_size(pool), 0);
        /* Reading from a sealed file is fine. */
        assert_int_equal(memory_pool_acquire(pool, fd, &info, 0, 4096, 1, &r, &v, NULL), 0);
        memory_pool_release(pool, r);
        memory_pool_free(pool);
        close(fd);
}

typedef struct TestAccount {
        uint64_t fds, address_space, max_fds;
} TestAccount;

static int test_account_charge(void *userdata, uint64_t fds, uint64_t address_space, bool force, BrokerError *e) {
        TestAccount *a = userdata;

        if (!force && a->fds + fds > a->max_fds)
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED, "fds");
        a->fds += fds;
        a->address_space += address_space;
        return 0;
}

static void test_account_release(void *userdata, uint64_t fds, uint64_t address_space) {
        TestAccount *a = userdata;

        assert_true(a->fds >= fds && a->address_space >= address_space);
        a->fds -= fds;
        a->address_space -= address_space;
}

static const MemoryPoolAccount test_account = { test_account_charge, test_account_release };

/* Every region is charged one fd and its mapping's length, refused before anything is made, and
 * given back when it goes; a shared region is charged once. */
static void test_account_regions(void **state) {
        MemoryPool *pool = memory_pool_new();
        TestAccount acct = { .max_fds = 2 };
        BrokerError e = BROKER_ERROR_INIT;
        int a = new_memfd(1 << 20), b = new_memfd(1 << 16), c = new_memfd(1 << 16);
        MemoryFileInfo ia, ib, ic;
        MemoryRegion *r1, *r2, *r3, *r4;
        uint64_t v;

        memory_pool_set_account(pool, &test_account, &acct);
        assert_int_equal(memory_check_fd(a, 3, &ia, NULL), 0);
        assert_int_equal(memory_check_fd(b, 3, &ib, NULL), 0);
        assert_int_equal(memory_check_fd(c, 3, &ic, NULL), 0);

        assert_int_equal(memory_pool_acquire(pool, a, &ia, 0, 4096, 3, &r1, &v, NULL), 0);
        assert_int_equal(acct.fds, 1);
        assert_int_equal(acct.address_space, 1 << 20); /* the whole file is mapped */
        assert_int_equal(memory_region_length(r1), 1 << 20);
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 4096, 4096, 3, &r2, &v, NULL), 0);
        assert_ptr_equal(r1, r2);
        assert_int_equal(acct.fds, 1);
        assert_int_equal(memory_pool_acquire(pool, b, &ib, 0, 4096, 3, &r3, &v, NULL), 0);
        assert_int_equal(acct.fds, 2);
        assert_int_equal(acct.address_space, (1 << 20) + (1 << 16));

        /* A third file is refused, and nothing was made of it. */
        assert_true(memory_pool_acquire(pool, c, &ic, 0, 4096, 3, &r4, &v, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_QUOTA_EXCEEDED);
        assert_int_equal(memory_pool_size(pool), 2);
        assert_int_equal(acct.fds, 2);

        memory_pool_release(pool, r1);
        assert_int_equal(acct.fds, 2);
        memory_pool_release(pool, r2);
        memory_pool_release(pool, r3);
        assert_int_equal(acct.fds, 0);
        assert_int_equal(acct.address_space, 0);
        memory_pool_free(pool);
        close(a); close(b); close(c);
}

static void test_hugetlb(void **state) {
        MemoryFileInfo info;
        int fd = memfd_create("huge", MFD_CLOEXEC | MFD_HUGETLB);

        if (fd < 0) {
                print_message("MFD_HUGETLB unavailable (%s); hugetlbfs alignment checked with a fake above\n",
                              strerror(errno));
                skip();
        }
        if (ftruncate(fd, 2 << 20) < 0) {
                close(fd);
                print_message("no huge pages reserved; skipping\n");
                skip();
        }
        assert_int_equal(memory_check_fd(fd, 3, &info, NULL), 0);
        assert_true(info.hugetlbfs);
        assert_true(info.page_size >= (2 << 20));
        close(fd);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fd_types),
                cmocka_unit_test(test_ranges),
                cmocka_unit_test(test_pool),
                cmocka_unit_test(test_sealed),
                cmocka_unit_test(test_account_regions),
                cmocka_unit_test(test_hugetlb),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
