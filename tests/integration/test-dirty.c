/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Dirty page tracking for migration through libvfio-broker on the sim backend: the bitmap lands in
 * the caller's memfd, bit for page, exactly over the mapped pages (type1 without a device that
 * reports its own writes marks every mapped page dirty); bad requests are refused and change nothing. */

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include <vfio-broker/vfio-broker.h>

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define PAGE 4096

static vfio_broker *b;
static vfio_broker_container *c;
static int ram, bitmap;

static int setup(void **state) {
        if (vfio_broker_open(&b) < 0 || vfio_broker_container_new(b, "dirty", &c) < 0 ||
            vfio_broker_container_attach_group(c, 1) < 0)
                return -1;
        ram = memfd_create("ram", MFD_CLOEXEC);
        bitmap = memfd_create("bitmap", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (ram < 0 || ftruncate(ram, 8 * MiB) < 0 || bitmap < 0 || ftruncate(bitmap, 64 * KiB) < 0)
                return -1;
        return 0;
}

static int teardown(void **state) {
        vfio_broker_container_close(c);
        vfio_broker_unref(b);
        return 0;
}

static vfio_broker_container_info info(void) {
        vfio_broker_container_info i;
        assert_int_equal(vfio_broker_container_get_info(c, &i), 0);
        return i;
}

static bool tracking(void) {
        vfio_broker_container_info i = info();
        bool t = i.dirty_tracking;
        vfio_broker_container_info_clear(&i);
        return t;
}

static void read_bitmap(uint64_t offset, uint64_t *words, size_t n) {
        assert_int_equal(pread(bitmap, words, n * 8, (off_t) offset), (ssize_t) (n * 8));
}

static void test_needs_tracking(void **state) {
        uint64_t dirty = 99;

        assert_false(tracking());
        assert_int_equal(vfio_broker_container_map(c, ram, 0, 64 * KiB, 0x100000, 3), 0);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, PAGE, bitmap, 0, &dirty), -EINVAL);
        assert_non_null(strstr(vfio_broker_error_message(b), "StartDirtyTracking"));
        assert_int_equal(dirty, 99);
}

static void test_bitmap(void **state) {
        uint64_t words[8], dirty = 0;

        assert_int_equal(vfio_broker_container_start_dirty_tracking(c), 0);
        assert_true(tracking());
        assert_int_equal(vfio_broker_container_start_dirty_tracking(c), 0); /* idempotent, as the kernel */
        assert_int_equal(vfio_broker_container_map(c, ram, 1 * MiB, 16 * KiB, 0x200000, 3), 0);

        /* Poison the file: the broker writes the whole bitmap, zeros included. */
        memset(words, 0xa5, sizeof(words));
        assert_int_equal(pwrite(bitmap, words, sizeof(words), 4096), (ssize_t) sizeof(words));

        /* [0x100000, 0x204000): 16 pages mapped, 240 not, 4 mapped. */
        uint64_t size = 0x204000 - 0x100000;
        assert_int_equal(vfio_broker_dirty_bitmap_size(size, PAGE), 40);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, size, PAGE, bitmap, 4096, &dirty), 0);
        assert_int_equal(dirty, 20);
        read_bitmap(4096, words, 8);
        assert_int_equal(words[0], 0xffff);
        assert_int_equal(words[1], 0);
        assert_int_equal(words[2], 0);
        assert_int_equal(words[3], 0);
        assert_int_equal(words[4], 0xf);
        /* Beyond the 40 bytes of this bitmap the file is untouched. */
        assert_int_equal(words[5], UINT64_C(0xa5a5a5a5a5a5a5a5));

        /* Asking again reports the pinned pages again: the device may have written them meanwhile. */
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x200000, 16 * KiB, PAGE, bitmap, 0, &dirty), 0);
        assert_int_equal(dirty, 4);
        /* A range holding no mapping is all clean. */
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x400000, MiB, PAGE, bitmap, 0, &dirty), 0);
        assert_int_equal(dirty, 0);
}

static void test_bad_requests(void **state) {
        uint64_t dirty;
        int ro, sealed;
        char path[64];

        /* The bitmap page size is the smallest IOMMU page. */
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, 2 * MiB, bitmap, 0, &dirty), -EINVAL);
        /* A range that cuts a mapping; the refusal leaves the caller's file as it was. */
        uint64_t poison = UINT64_C(0x5a5a5a5a5a5a5a5a), word = 0;
        assert_int_equal(pwrite(bitmap, &poison, 8, 0), 8);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x101000, 4 * PAGE, PAGE, bitmap, 0, &dirty), -EXDEV);
        assert_int_equal(vfio_broker_container_unmap_dirty(c, 0x101000, 4 * PAGE, PAGE, bitmap, 0, &dirty), -EXDEV);
        assert_int_equal(pread(bitmap, &word, 8, 0), 8);
        assert_int_equal(word, poison);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 4 * PAGE, PAGE, bitmap, 0, &dirty), -EXDEV);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100800, 4 * PAGE, PAGE, bitmap, 0, &dirty), -EFAULT);
        /* The bitmap must fit the file, at an 8-byte aligned offset. */
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, PAGE, bitmap, 64 * KiB - 4, &dirty), -ERANGE);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, PAGE, bitmap, 3, &dirty), -ERANGE);
        /* Not writable: a read-only fd, a write-sealed memfd, a pipe. */
        snprintf(path, sizeof(path), "/proc/self/fd/%d", bitmap);
        ro = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(ro >= 0);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, PAGE, ro, 0, &dirty), -EBADF);
        close(ro);
        sealed = memfd_create("sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(sealed >= 0 && ftruncate(sealed, 4096) == 0 && fcntl(sealed, F_ADD_SEALS, F_SEAL_WRITE) == 0);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, PAGE, sealed, 0, &dirty), -EBADF);
        close(sealed);
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, PAGE, p[1], 0, &dirty), -EBADF);
        close(p[0]);
        close(p[1]);
}

static void test_unmap_with_bitmap(void **state) {
        vfio_broker_container_info i;
        uint64_t words[1], dirty = 0;

        assert_int_equal(vfio_broker_container_unmap_dirty(c, 0x201000, PAGE, PAGE, bitmap, 0, &dirty), -EXDEV);
        i = info();
        assert_int_equal(i.mappings, 2);
        vfio_broker_container_info_clear(&i);

        assert_int_equal(vfio_broker_container_unmap_dirty(c, 0x200000, 16 * KiB, PAGE, bitmap, 0, &dirty), 0);
        assert_int_equal(dirty, 4);
        read_bitmap(0, words, 1);
        assert_int_equal(words[0], 0xf);
        i = info();
        assert_int_equal(i.mappings, 1);
        assert_int_equal(i.mapped_bytes, 64 * KiB);
        vfio_broker_container_info_clear(&i);
}

static void test_stop(void **state) {
        uint64_t dirty;

        assert_int_equal(vfio_broker_container_stop_dirty_tracking(c), 0);
        assert_false(tracking());
        assert_int_equal(vfio_broker_container_get_dirty_bitmap(c, 0x100000, 64 * KiB, PAGE, bitmap, 0, &dirty), -EINVAL);
        assert_int_equal(vfio_broker_container_unmap_dirty(c, 0x100000, 64 * KiB, PAGE, bitmap, 0, &dirty), -EINVAL);

        /* Tracking belongs to the IOMMU, which goes with the last group. */
        assert_int_equal(vfio_broker_container_start_dirty_tracking(c), 0);
        assert_int_equal(vfio_broker_container_unmap(c, 0x100000, 64 * KiB), 0);
        assert_int_equal(vfio_broker_container_detach_group(c, 1), 0);
        assert_false(tracking());
        assert_int_equal(vfio_broker_container_start_dirty_tracking(c), -ENXIO);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_needs_tracking),
                cmocka_unit_test(test_bitmap),
                cmocka_unit_test(test_bad_requests),
                cmocka_unit_test(test_unmap_with_bitmap),
                cmocka_unit_test(test_stop),
        };
        return cmocka_run_group_tests_name("dirty", tests, setup, teardown);
}
