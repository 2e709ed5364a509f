#!/bin/busybox sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# /init of the VFIO test VM: a real kernel VFIO stack with QEMU's edu devices bound to vfio-pci.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin:/usr/local/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/shm /dev/hugepages && mount -t tmpfs tmpfs /dev/shm
mount -t hugetlbfs hugetlbfs /dev/hugepages 2>/dev/null
echo 1 > /proc/sys/kernel/printk_ratelimit 2>/dev/null

echo "VMLOG: kernel $(uname -r), booted in $(cut -d' ' -f1 /proc/uptime) s"
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
        insmod /lib/modules/$m.ko || echo "VMLOG: insmod $m failed"
done

# Bind every edu device (1234:11e8) to vfio-pci; leave everything else on its own driver.
for d in /sys/bus/pci/devices/*; do
        if [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ]; then
                echo vfio-pci > $d/driver_override
                echo ${d##*/} > /sys/bus/pci/drivers_probe
                echo "VMLOG: bound ${d##*/} (group $(basename $(readlink $d/iommu_group))) to vfio-pci"
        fi
done
ls /dev/vfio | sed 's/^/VMLOG: \/dev\/vfio\//'

sh /tests/run.sh
echo "VMDONE"
poweroff -f
