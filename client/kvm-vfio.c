/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* KVM-VFIO registration of device fds, in the VMM's own process (see vfio-broker.h for why the broker
 * cannot do it). */

#include <errno.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <vfio-broker/vfio-broker.h>

#include "macro.h"

/* The kernel's KVM_DEV_VFIO_FILE(_ADD|_DEL) (6.6) have the values of the older GROUP names. */
#ifndef KVM_DEV_VFIO_FILE
#define KVM_DEV_VFIO_FILE KVM_DEV_VFIO_GROUP
#define KVM_DEV_VFIO_FILE_ADD KVM_DEV_VFIO_GROUP_ADD
#define KVM_DEV_VFIO_FILE_DEL KVM_DEV_VFIO_GROUP_DEL
#endif

/* What an anonymous-inode fd is: "anon_inode:kvm-vfio", "anon_inode:[vfio-device]". */
static bool fd_is_anon_inode(int fd, const char *name) {
        char link[64], target[64];
        ssize_t n;

        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return false;
        target[n] = 0;
        return strncmp(target, "anon_inode:", 11) == 0 && strcmp(target + 11, name) == 0;
}

static int kvm_vfio_file(int kvm_vfio_fd, int device_fd, uint64_t attr) {
        int32_t fd = device_fd;
        struct kvm_device_attr a = {
                .group = KVM_DEV_VFIO_FILE,
                .attr = attr,
                .addr = (uint64_t) (uintptr_t) &fd,
        };

        if (kvm_vfio_fd < 0 || device_fd < 0)
                return -EBADF;
        if (!fd_is_anon_inode(kvm_vfio_fd, "kvm-vfio") || !fd_is_anon_inode(device_fd, "[vfio-device]"))
                return -EBADF;
        if (ioctl(kvm_vfio_fd, KVM_SET_DEVICE_ATTR, &a) < 0)
                /* Before 6.6 only group files are accepted, and a device file is EINVAL. */
                return errno == EINVAL && attr == KVM_DEV_VFIO_FILE_ADD ? -EOPNOTSUPP : -errno;
        return 0;
}

_public_ int vfio_broker_kvm_vfio_add_device(int kvm_vfio_fd, int device_fd) {
        return kvm_vfio_file(kvm_vfio_fd, device_fd, KVM_DEV_VFIO_FILE_ADD);
}

_public_ int vfio_broker_kvm_vfio_del_device(int kvm_vfio_fd, int device_fd) {
        return kvm_vfio_file(kvm_vfio_fd, device_fd, KVM_DEV_VFIO_FILE_DEL);
}
