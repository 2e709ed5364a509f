/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <stdbool.h>
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

static int new_memfd(uint64_t size) {
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

#define GiB (UINT64_C(1) << 30)

/* Whether addr is mapped in this process (msync fails with ENOMEM on an unmapped page). */
static bool is_mapped(uint64_t addr) {
        return msync((void *) (uintptr_t) (addr & ~UINT64_C(4095)), 4096, MS_ASYNC) == 0;
}

static void test_pool(void **state) {
        MemoryPool *pool = memory_pool_new();
        int a = new_memfd(1 << 20), b = new_memfd(1 << 20);
        int a_ro = reopen(a, O_RDONLY);
        MemoryFileInfo ia, ib, ia_ro;
        MemoryWindow *w1, *w2, *w3, *w4, *w5, *w6;

        assert_non_null(pool);
        assert_int_equal(memory_check_fd(a, 3, &ia, NULL), 0);
        assert_int_equal(memory_check_fd(b, 3, &ib, NULL), 0);
        assert_int_equal(memory_check_fd(a_ro, 1, &ia_ro, NULL), 0);

        /* Read-only first: a region with PROT_READ. */
        assert_int_equal(memory_pool_acquire(pool, a_ro, &ia_ro, 0, 4096, 1, &w1, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 1);
        /* The same file for writing needs a new, writable region... */
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 8192, 4096, 3, &w2, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 2);
        assert_ptr_not_equal(memory_window_region(w1), memory_window_region(w2));
        /* ... and either serves reads, in the window it has there (the whole small file). */
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 4096, 4096, 1, &w3, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 2);
        assert_true(w3 == w1 || w3 == w2);
        assert_int_equal(memory_pool_n_windows(pool), 2);
        assert_int_equal(memory_window_length(w2), 1 << 20);
        /* Another file, another region. */
        assert_int_equal(memory_pool_acquire(pool, b, &ib, 0, 1 << 20, 3, &w4, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 3);

        /* The daemon's address really is the file at that offset. */
        assert_int_equal(pwrite(a, "broker", 6, 8192), 6);
        assert_memory_equal((const void *) (uintptr_t) memory_window_vaddr(w2, 8192), "broker", 6);
        assert_int_equal(pwrite(a, "pinned", 6, 4096), 6);
        assert_memory_equal((const void *) (uintptr_t) memory_window_vaddr(w3, 4096), "pinned", 6);

        /* The file grew: a request beyond the first window gets a window of the same region that covers
         * the grown granule, and that window serves the requests there from now on. */
        assert_int_equal(ftruncate(a, 4 << 20), 0);
        assert_int_equal(memory_check_fd(a, 3, &ia, NULL), 0);
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 3 << 20, 4096, 3, &w5, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 3);
        assert_ptr_equal(memory_window_region(w5), memory_window_region(w2));
        assert_int_equal(memory_window_length(w5), 4 << 20);
        assert_int_equal(pwrite(a, "grown", 5, 3 << 20), 5);
        assert_memory_equal((const void *) (uintptr_t) memory_window_vaddr(w5, 3 << 20), "grown", 5);
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 0, 4096, 3, &w6, NULL), 0);
        assert_ptr_equal(w6, w5);
        /* The window it replaced still maps what its mapping pins. */
        assert_memory_equal((const void *) (uintptr_t) memory_window_vaddr(w2, 8192), "broker", 6);

        memory_pool_release(pool, w1);
        memory_pool_release(pool, w2);
        memory_pool_release(pool, w3);
        assert_int_equal(memory_pool_size(pool), 2);
        memory_pool_release(pool, w4);
        memory_pool_release(pool, w5);
        assert_int_equal(memory_pool_size(pool), 1);
        memory_pool_release(pool, w6);
        assert_int_equal(memory_pool_size(pool), 0);
        assert_int_equal(memory_pool_n_windows(pool), 0);
        memory_pool_free(pool);
        close(a); close(b); close(a_ro);
}

static void test_sealed(void **state) {
        MemoryPool *pool = memory_pool_new();
        int fd = new_memfd(1 << 16);
        BrokerError e = BROKER_ERROR_INIT;
        MemoryFileInfo info;
        MemoryWindow *w;

        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), 0);
        assert_int_equal(memory_check_fd(fd, 3, &info, NULL), 0);
        assert_true(memory_pool_acquire(pool, fd, &info, 0, 4096, 3, &w, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_BAD_MEMORY);
        assert_int_equal(memory_pool_size(pool), 0);
        /* Reading from a sealed file is fine. */
        assert_int_equal(memory_pool_acquire(pool, fd, &info, 0, 4096, 1, &w, NULL), 0);
        memory_pool_release(pool, w);
        memory_pool_free(pool);
        close(fd);
}

typedef struct TestAccount {
        uint64_t fds, address_space, max_fds, max_address_space;
} TestAccount;

static int test_account_charge(void *userdata, uint64_t fds, uint64_t address_space, bool force, BrokerError *e) {
        TestAccount *a = userdata;

        if (!force && a->fds + fds > a->max_fds)
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED, "fds");
        if (!force && a->address_space + address_space > a->max_address_space)
                return broker_error_set(e, BROKER_ERROR_QUOTA_EXCEEDED, "address_space");
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

/* Every region is charged one fd, every window the address space it maps; refused before anything is
 * made, and given back when it goes; a shared region or window is charged once. */
static void test_account_regions(void **state) {
        MemoryPool *pool = memory_pool_new();
        TestAccount acct = { .max_fds = 2, .max_address_space = 3 * GiB };
        BrokerError e = BROKER_ERROR_INIT;
        int a = new_memfd(1 << 20), b = new_memfd(4 * GiB), c = new_memfd(1 << 16);
        MemoryFileInfo ia, ib, ic;
        MemoryWindow *w1, *w2, *w3, *w4, *w5;

        memory_pool_set_account(pool, &test_account, &acct);
        assert_int_equal(memory_check_fd(a, 3, &ia, NULL), 0);
        assert_int_equal(memory_check_fd(b, 3, &ib, NULL), 0);
        assert_int_equal(memory_check_fd(c, 3, &ic, NULL), 0);

        assert_int_equal(memory_pool_acquire(pool, a, &ia, 0, 4096, 3, &w1, NULL), 0);
        assert_int_equal(acct.fds, 1);
        assert_int_equal(acct.address_space, 1 << 20); /* the granule, clipped to the file's end */
        assert_int_equal(memory_pool_acquire(pool, a, &ia, 4096, 4096, 3, &w2, NULL), 0);
        assert_ptr_equal(w1, w2);
        assert_int_equal(acct.fds, 1);
        assert_int_equal(acct.address_space, 1 << 20);
        /* A 4 KiB Map of a sparse 4 GiB file reserves one granule, not the file. */
        assert_int_equal(memory_pool_acquire(pool, b, &ib, 0, 4096, 3, &w3, NULL), 0);
        assert_int_equal(acct.fds, 2);
        assert_int_equal(acct.address_space, (1 << 20) + GiB);
        assert_int_equal(memory_pool_acquire(pool, b, &ib, GiB, 4096, 3, &w4, NULL), 0);
        assert_int_equal(acct.address_space, (1 << 20) + 2 * GiB);

        /* A third window of b would pass the address space limit: refused, nothing made. */
        assert_true(memory_pool_acquire(pool, b, &ib, 2 * GiB, 4096, 3, &w5, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_QUOTA_EXCEEDED);
        assert_string_equal(e.message, "address_space");
        assert_int_equal(memory_pool_n_windows(pool), 3);
        assert_int_equal(acct.address_space, (1 << 20) + 2 * GiB);
        /* A third file is refused, and nothing was made of it. */
        e = BROKER_ERROR_INIT;
        assert_true(memory_pool_acquire(pool, c, &ic, 0, 4096, 3, &w5, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_QUOTA_EXCEEDED);
        assert_int_equal(memory_pool_size(pool), 2);
        assert_int_equal(acct.fds, 2);

        memory_pool_release(pool, w1);
        assert_int_equal(acct.fds, 2);
        memory_pool_release(pool, w2);
        assert_int_equal(acct.fds, 1);
        assert_int_equal(acct.address_space, 2 * GiB);
        memory_pool_release(pool, w3);
        assert_int_equal(acct.address_space, GiB);
        assert_int_equal(acct.fds, 1);
        memory_pool_release(pool, w4);
        assert_int_equal(acct.fds, 0);
        assert_int_equal(acct.address_space, 0);
        memory_pool_free(pool);
        close(a); close(b); close(c);
}

/* Windows of one sparse file: shared inside a granule, one per granule otherwise, one covering all
 * granules a request crosses (which then serves the requests there), clipped to the file's end,
 * unmapped with their last mapping. */
static void test_windows(void **state) {
        MemoryPool *pool = memory_pool_new();
        TestAccount acct = { .max_fds = 1, .max_address_space = UINT64_MAX };
        int fd = new_memfd(3 * GiB + 8192);
        MemoryWindow *w1, *w2, *w3, *w4, *w5, *w6;
        uint64_t v1, v3;
        MemoryFileInfo info;

        memory_pool_set_account(pool, &test_account, &acct);
        assert_int_equal(memory_check_fd(fd, 3, &info, NULL), 0);

        assert_int_equal(memory_pool_acquire(pool, fd, &info, 0, 4096, 3, &w1, NULL), 0);
        assert_int_equal(memory_window_length(w1), GiB);
        assert_int_equal(memory_pool_acquire(pool, fd, &info, GiB - 4096, 4096, 3, &w2, NULL), 0);
        assert_ptr_equal(w2, w1);
        assert_int_equal(memory_pool_acquire(pool, fd, &info, GiB + 4096, 4096, 3, &w3, NULL), 0);
        assert_ptr_not_equal(w3, w1);
        assert_int_equal(memory_window_length(w3), GiB);
        /* The last granule holds 8 KiB of file: that is all its window maps. */
        assert_int_equal(memory_pool_acquire(pool, fd, &info, 3 * GiB, 8192, 3, &w4, NULL), 0);
        assert_int_equal(memory_window_length(w4), 8192);
        assert_int_equal(memory_pool_n_windows(pool), 3);
        assert_int_equal(memory_pool_size(pool), 1);
        assert_int_equal(acct.address_space, 2 * GiB + 8192);
        assert_int_equal(acct.fds, 1);

        /* Across the first two granules: one window over both, which the next request inside either
         * shares; the two it replaced stay for the mappings that hold them. */
        assert_int_equal(memory_pool_acquire(pool, fd, &info, GiB - 4096, 8192, 3, &w5, NULL), 0);
        assert_int_equal(memory_window_length(w5), 2 * GiB);
        assert_int_equal(memory_pool_n_windows(pool), 4);
        assert_int_equal(acct.address_space, 4 * GiB + 8192);
        assert_int_equal(memory_pool_acquire(pool, fd, &info, 4096, 4096, 3, &w6, NULL), 0);
        assert_ptr_equal(w6, w5);

        /* Every window shows the same file. */
        v1 = memory_window_vaddr(w1, GiB - 4096);
        v3 = memory_window_vaddr(w3, GiB + 4096);
        assert_int_equal(pwrite(fd, "window", 6, (off_t) (GiB - 4096)), 6);
        assert_memory_equal((const void *) (uintptr_t) v1, "window", 6);
        assert_memory_equal((const void *) (uintptr_t) memory_window_vaddr(w5, GiB - 4096), "window", 6);
        assert_int_equal(pwrite(fd, "second", 6, (off_t) (GiB + 4096)), 6);
        assert_memory_equal((const void *) (uintptr_t) v3, "second", 6);
        assert_memory_equal((const void *) (uintptr_t) memory_window_vaddr(w5, GiB + 4096), "second", 6);

        /* The last mapping of a window unmaps it and gives its address space back. */
        memory_pool_release(pool, w1);
        assert_true(is_mapped(v1));
        memory_pool_release(pool, w2);
        assert_false(is_mapped(v1));
        assert_int_equal(memory_pool_n_windows(pool), 3);
        assert_int_equal(acct.address_space, 3 * GiB + 8192);
        memory_pool_release(pool, w3);
        assert_false(is_mapped(v3));
        memory_pool_release(pool, w5);
        memory_pool_release(pool, w6);
        assert_int_equal(memory_pool_n_windows(pool), 1);
        assert_int_equal(acct.address_space, 8192);
        assert_int_equal(acct.fds, 1);
        memory_pool_release(pool, w4);
        assert_int_equal(memory_pool_size(pool), 0);
        assert_int_equal(acct.address_space, 0);
        assert_int_equal(acct.fds, 0);
        memory_pool_free(pool);
        close(fd);
}

/* After a restart: adopting a file maps nothing; the restored mappings make their windows again (held
 * whatever the limits say), a new request through the same region stays within them, and regions no
 * mapping came back to are pruned. */
static unsigned lingered;

static void count_linger(void *userdata) {
        lingered++;
}

/* With a linger callback, the last window nothing borrows stays mapped (one per pool) until
 * memory_pool_reap(): a request for the same range gets it back without a new mapping; a request for
 * anything new reaps it first, so it never counts twice against a limit; freeing the pool reaps it. */
static void test_linger(void **state) {
        MemoryPool *pool = memory_pool_new();
        TestAccount acct = { .max_fds = 1, .max_address_space = GiB };
        int fd = new_memfd(2 * GiB), other = new_memfd(GiB);
        MemoryWindow *w, *again, *next;
        MemoryFileInfo info, info2;
        uint64_t v;

        memory_pool_set_account(pool, &test_account, &acct);
        memory_pool_set_linger(pool, count_linger, NULL);
        lingered = 0;
        assert_int_equal(memory_check_fd(fd, 3, &info, NULL), 0);
        assert_int_equal(memory_check_fd(other, 3, &info2, NULL), 0);

        assert_int_equal(memory_pool_acquire(pool, fd, &info, 0, 4096, 3, &w, NULL), 0);
        v = memory_window_vaddr(w, 0);
        memory_pool_release(pool, w);
        assert_int_equal(lingered, 1);
        assert_true(is_mapped(v));
        assert_int_equal(memory_pool_size(pool), 1);
        assert_int_equal(acct.address_space, GiB);

        /* The same range again: the same window, nothing new mapped or charged. */
        assert_int_equal(memory_pool_acquire(pool, fd, &info, 8192, 4096, 3, &again, NULL), 0);
        assert_ptr_equal(again, w);
        assert_int_equal(memory_window_vaddr(again, 0), v);
        assert_int_equal(acct.address_space, GiB);
        memory_pool_release(pool, again);
        assert_int_equal(lingered, 2);

        /* Another granule of the file: the idle window goes first, so the 1 GiB limit still admits
         * the new one, and the region (its fd) stays. */
        assert_int_equal(memory_pool_acquire(pool, fd, &info, GiB, 4096, 3, &next, NULL), 0);
        assert_int_equal(acct.address_space, GiB);
        assert_int_equal(acct.fds, 1);
        memory_pool_release(pool, next);
        /* Another file: the idle window and its region go first (the fd limit is 1). */
        assert_int_equal(memory_pool_acquire(pool, other, &info2, 0, 4096, 3, &next, NULL), 0);
        assert_int_equal(memory_pool_size(pool), 1);
        assert_int_equal(acct.fds, 1);
        memory_pool_release(pool, next);

        /* The owner's reap lets go of it. */
        v = memory_window_vaddr(next, 0);
        memory_pool_reap(pool);
        assert_false(is_mapped(v));
        assert_int_equal(memory_pool_size(pool), 0);
        assert_int_equal(acct.address_space, 0);
        assert_int_equal(acct.fds, 0);

        /* An idle window left when the pool goes is reaped with it. */
        assert_int_equal(memory_pool_acquire(pool, fd, &info, 0, 4096, 3, &w, NULL), 0);
        memory_pool_release(pool, w);
        memory_pool_free(pool);
        assert_int_equal(acct.fds, 0);
        close(fd);
        close(other);
}

static void test_adopt(void **state) {
        MemoryPool *pool = memory_pool_new();
        TestAccount acct = { .max_fds = 0, .max_address_space = 0 };
        BrokerError e = BROKER_ERROR_INIT;
        int a = new_memfd(3 * GiB), b = new_memfd(1 << 20);
        MemoryWindow *w1, *w2, *w3;

        memory_pool_set_account(pool, &test_account, &acct);
        assert_int_equal(memory_pool_adopt(pool, dup(a), 7, 3, NULL), 0);
        assert_int_equal(memory_pool_adopt(pool, dup(b), 8, 1, NULL), 0);
        assert_true(memory_pool_adopt(pool, dup(b), 8, 1, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_INVALID_ARGS);
        assert_int_equal(memory_pool_size(pool), 2);
        assert_int_equal(memory_pool_n_windows(pool), 0);
        assert_int_equal(acct.fds, 2);
        assert_int_equal(acct.address_space, 0);

        assert_int_equal(memory_pool_acquire_id(pool, 7, GiB + 4096, 4096, true, &w1, NULL), 0);
        assert_int_equal(memory_window_length(w1), GiB);
        assert_int_equal(acct.address_space, GiB);
        assert_int_equal(memory_pool_acquire_id(pool, 7, GiB, 8192, true, &w2, NULL), 0);
        assert_ptr_equal(w2, w1);
        assert_int_equal(pwrite(a, "kept", 4, (off_t) GiB + 4096), 4);
        assert_memory_equal((const void *) (uintptr_t) memory_window_vaddr(w1, GiB + 4096), "kept", 4);

        /* Not a restore: the limits apply. */
        e = BROKER_ERROR_INIT;
        assert_true(memory_pool_acquire_id(pool, 7, 0, 4096, false, &w3, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_QUOTA_EXCEEDED);
        /* What the state says must fit the file, and name a kept region. */
        e = BROKER_ERROR_INIT;
        assert_true(memory_pool_acquire_id(pool, 7, 3 * GiB, 4096, true, &w3, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_OUT_OF_RANGE);
        e = BROKER_ERROR_INIT;
        assert_true(memory_pool_acquire_id(pool, 7, UINT64_MAX - 4095, 8192, true, &w3, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_OUT_OF_RANGE);
        e = BROKER_ERROR_INIT;
        assert_true(memory_pool_acquire_id(pool, 9, 0, 4096, true, &w3, &e) < 0);
        assert_int_equal(e.code, BROKER_ERROR_INVALID_ARGS);
        assert_int_equal(memory_pool_n_windows(pool), 1);
        assert_int_equal(acct.address_space, GiB);

        memory_pool_prune(pool);
        assert_int_equal(memory_pool_size(pool), 1);
        assert_null(memory_pool_find_id(pool, 8));
        assert_int_equal(acct.fds, 1);

        memory_pool_release(pool, w1);
        memory_pool_release(pool, w2);
        assert_int_equal(memory_pool_size(pool), 0);
        assert_int_equal(acct.fds, 0);
        assert_int_equal(acct.address_space, 0);
        memory_pool_free(pool);
        close(a); close(b);
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
                cmocka_unit_test(test_windows),
                cmocka_unit_test(test_linger),
                cmocka_unit_test(test_adopt),
                cmocka_unit_test(test_hugetlb),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
