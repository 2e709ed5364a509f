/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* KVM-VFIO registration. The reason the broker cannot register its group fds with a VMM's KVM-VFIO
 * device, proven on this host's KVM: a KVM device fd works only in the process that created the VM
 * (another process gets EIO). And the library's own-process helper checks both fds before it asks
 * the kernel. Needs a /dev/kvm that can create a VM (not run one); exits 77 (skip) without. */

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <vfio-broker/vfio-broker.h>

static int kvm_vfio = -1;

static void test_foreign_process_gets_eio(void **state) {
        struct kvm_device_attr a = { .group = KVM_DEV_VFIO_GROUP, .attr = KVM_DEV_VFIO_GROUP_ADD };
        int status;
        pid_t pid;

        /* In the VM's own process the device answers... */
        assert_int_equal(ioctl(kvm_vfio, KVM_HAS_DEVICE_ATTR, &a), 0);
        /* ...in any other (a forked child has another mm, as the broker has) it refuses. */
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(ioctl(kvm_vfio, KVM_HAS_DEVICE_ATTR, &a) < 0 && errno == EIO ? 0 : 1);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_helper_checks_fds(void **state) {
        vfio_broker *b;
        vfio_broker_container *c;
        int memfd, device;

        memfd = memfd_create("not-kvm", MFD_CLOEXEC);
        assert_true(memfd >= 0);
        /* The sim's device fds are sockets, not VFIO devices: the kernel is not even asked. */
        assert_int_equal(vfio_broker_open(&b), 0);
        assert_int_equal(vfio_broker_container_new(b, "kvm", &c), 0);
        assert_int_equal(vfio_broker_container_attach_group(c, 2), 0);
        device = vfio_broker_container_open_device(c, "0000:00:02.0");
        assert_true(device >= 0);

        assert_int_equal(vfio_broker_kvm_vfio_add_device(memfd, device), -EBADF);
        assert_int_equal(vfio_broker_kvm_vfio_add_device(kvm_vfio, device), -EBADF);
        assert_int_equal(vfio_broker_kvm_vfio_add_device(kvm_vfio, memfd), -EBADF);
        assert_int_equal(vfio_broker_kvm_vfio_del_device(kvm_vfio, -1), -EBADF);
        assert_int_equal(vfio_broker_kvm_vfio_add_device(-1, device), -EBADF);

        close(device);
        close(memfd);
        assert_int_equal(vfio_broker_container_close(c), 0);
        vfio_broker_unref(b);
}

int main(void) {
        struct kvm_create_device cd = { .type = KVM_DEV_TYPE_VFIO };
        int kvm, vm;

        kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
        vm = kvm < 0 ? -1 : ioctl(kvm, KVM_CREATE_VM, 0);
        if (vm < 0 || ioctl(vm, KVM_CREATE_DEVICE, &cd) < 0) {
                fprintf(stderr, "No usable /dev/kvm here (%s); skipping.\n", strerror(errno));
                return 77;
        }
        kvm_vfio = cd.fd;

        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_foreign_process_gets_eio),
                cmocka_unit_test(test_helper_checks_fds),
        };
        return cmocka_run_group_tests_name("kvm-vfio", tests, NULL, NULL);
}
