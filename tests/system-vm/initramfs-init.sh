#!/bin/busybox sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# /init of the system VM's initramfs: load what mounting the root file system and VFIO need (Debian's
# kernel has them as modules), bind the edu devices to vfio-pci, then hand over to systemd on /dev/vda.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in $(cat /modules/order); do
        insmod /modules/$m.ko || echo "initramfs: insmod $m failed"
done

# Every edu device (1234:11e8) to vfio-pci; everything else keeps its driver.
for d in /sys/bus/pci/devices/*; do
        if [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ]; then
                echo vfio-pci > $d/driver_override
                echo ${d##*/} > /sys/bus/pci/drivers_probe
        fi
done

i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /root
# By its label: the read-only QEMU tree is a second virtio disk.
rootdev=$(findfs LABEL=sysvm 2>/dev/null) || rootdev=/dev/vda
mount -t ext4 -o rw $rootdev /root || { echo "initramfs: cannot mount $rootdev"; poweroff -f; }
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
