#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Runs inside the VM: a system-like dbus-daemon with the installed policy, vfio-brokerd on the real
# kernel, then the tests. Results go to the serial console as "VMTAP: ok|not ok - name" lines that
# the host turns into one TAP stream.
prefix=/usr/local
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:log_path=/tmp/sanitizer
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=/tmp/sanitizer

tap() { # status name
        if [ "$1" = 0 ]; then echo "VMTAP: ok - $2"; else echo "VMTAP: not ok - $2"; fi
}

mkdir -p /run/dbus
sed -e "s|@POLICY@|$prefix/share/dbus-1/system.d/org.vfiobroker.Broker1.conf|" \
    -e "s|@SOCKET@|/run/dbus/system_bus_socket|" /tests/system-bus.conf.in > /run/bus.conf
dbus-daemon --config-file=/run/bus.conf --fork --print-address=3 3>/run/bus.address
export DBUS_SYSTEM_BUS_ADDRESS=$(head -n 1 /run/bus.address)

# udev, as on a host: the broker hears of devices bound and unbound through it.
/lib/systemd/systemd-udevd --daemon > /tmp/udevd.log 2>&1
tap $? "systemd-udevd starts"

start_daemon() {
        $prefix/sbin/vfio-brokerd --backend=vfio > /tmp/daemon.log 2>&1 &
        DAEMON_PID=$!
        export VFIO_BROKER_DAEMON_PID=$DAEMON_PID
        i=0
        while [ $i -lt 300 ]; do
                busctl --system get-property org.vfiobroker.Broker1 /org/vfiobroker/Broker1 org.vfiobroker.Broker1.Manager Version >/dev/null 2>&1 && return 0
                kill -0 $DAEMON_PID 2>/dev/null || break
                sleep 0.1
                i=$((i + 1))
        done
        return 1
}

start_daemon
tap $? "vfio-brokerd --backend=vfio starts on the real kernel"
busctl --system get-property org.vfiobroker.Broker1 /org/vfiobroker/Broker1 org.vfiobroker.Broker1.Manager Backend | grep -q vfio-type1
tap $? "the Backend property is vfio-type1"
busctl --system tree --list org.vfiobroker.Broker1 | sed 's/^/VMLOG: /'

# The same contract tests as on the host's sim backend.
CMOCKA_MESSAGE_OUTPUT=TAP /tests/test-broker > /tmp/contract.log 2>&1
tap $? "contract: the whole suite passes against vfio-type1"
awk '/^ok [0-9]+ - / { sub(/^ok [0-9]+ - /, ""); print "VMTAP: ok - contract: " $0; next }
     /^not ok [0-9]+ - / { sub(/^not ok [0-9]+ - /, ""); print "VMTAP: not ok - contract: " $0; next }
     { print "VMLOG: " $0 }' /tmp/contract.log

# Device DMA through the broker's mappings.
/tests/test-dma 2>&1

# Hot reset, dirty tracking and coordinated discard on the real kernel.
/tests/test-vmm-features 2>&1

# An edu served over vfio-user, driven by protocol messages only.
/tests/test-vfio-user 2>&1

# The client library and the command-line tool on the real kernel.
export LD_LIBRARY_PATH=$prefix/lib/x86_64-linux-gnu:$prefix/lib
group=$(ls /dev/vfio | grep -v vfio | sort -n | head -n 1)
/tests/mini-vmm --group=$group --ram-mib=64 > /tmp/mini-vmm.log 2>&1
tap $? "libvfio-broker: the mini VMM maps 64 MiB, opens its device and cleans up on vfio-type1"
sed 's/^/VMLOG: mini-vmm: /' /tmp/mini-vmm.log
grep -q '^signal  Manager BalloonInhibited=true BalloonInhibitors=1' /tmp/mini-vmm.log &&
        grep -q '^signal  Manager BalloonInhibited=false BalloonInhibitors=0' /tmp/mini-vmm.log
tap $? "libvfio-broker: balloon callbacks follow attach and detach on vfio-type1"
$prefix/bin/vfio-brokerctl --json groups > /tmp/groups.json 2>&1 && grep -q '"viable": true' /tmp/groups.json
tap $? "vfio-brokerctl --json groups lists the edu groups"
$prefix/bin/vfio-brokerctl status | grep -q 'Backend: *vfio-type1'
tap $? "vfio-brokerctl status shows the vfio-type1 backend"

# The broker follows the host: an edu unbound from vfio-pci and bound again.
/tests/test-hotplug 2>&1

kill -TERM $DAEMON_PID
i=0
while kill -0 $DAEMON_PID 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
wait $DAEMON_PID
tap $? "vfio-brokerd exits cleanly on SIGTERM"
sed 's/^/VMLOG: daemon: /' /tmp/daemon.log

# Restarts: the daemon under a small fd-store supervisor (what systemd's FileDescriptorStoreMax= does).
/tests/fdstore-supervisor /run/sup $prefix/sbin/vfio-brokerd --backend=vfio --state-dir=/run/sup/state \
        > /tmp/supervisor.log 2>&1 &
i=0
while ! grep -q started /tmp/supervisor.log 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
first=$(ls /dev/vfio | grep -v vfio | sort -n | head -n 1)
VFIO_BROKER_HARNESS=/run/sup /tests/test-restart-dma $first $(ls /sys/kernel/iommu_groups/$first/devices) 2>&1
# A device served over vfio-user keeps its session across the same restarts.
VFIO_BROKER_HARNESS=/run/sup /tests/test-vfio-user-restart $first $(ls /sys/kernel/iommu_groups/$first/devices | head -n 1) 2>&1
echo quit > /run/sup/cmd
cat /run/sup/ack > /dev/null
sed 's/^/VMLOG: supervisor: /' /tmp/supervisor.log
if ls /tmp/sanitizer* >/dev/null 2>&1; then
        cat /tmp/sanitizer* | sed 's/^/VMLOG: /'
        tap 1 "no sanitizer reports across the restarts"
else
        tap 0 "no sanitizer reports across the restarts"
fi
if ls /tmp/sanitizer* >/dev/null 2>&1; then
        cat /tmp/sanitizer* | sed 's/^/VMLOG: /'
        tap 1 "no sanitizer reports"
else
        tap 0 "no sanitizer reports"
fi
dmesg | grep -i -E 'DMAR|vfio' | tail -n 20 | sed 's/^/VMLOG: dmesg: /'

# Nested: Debian testing's QEMU (the vfio-user client) from the tree on the virtio disk, driven
# through qtest by the same driver as on the host, against QEMU's own edu (at integration, the
# broker's device over vfio-user). Its timings come back as VMBENCH lines.
if [ -f /tests/qemu/unavailable ]; then
        tap 1 "nested QEMU: no Debian testing tree: $(cat /tests/qemu/unavailable)"
elif [ -f /lib/modules/nested/order ]; then
        t0=$(cut -d' ' -f1 /proc/uptime)
        for m in $(cat /lib/modules/nested/order); do
                insmod /lib/modules/nested/$m.ko || echo "VMLOG: insmod $m failed"
        done
        i=0
        while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        q=/mnt/qemu-root
        mkdir -p $q
        mount -t ext4 -o ro /dev/vda $q && mount -t proc proc $q/proc && mount -t tmpfs tmpfs $q/tmp
        tap $? "nested QEMU: the Debian testing tree mounts from the virtio disk"
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "VMBENCH: nested QEMU: modules and mount took $(echo "$t0 $t1" | awk '{ printf "%.1f", $2 - $1 }') s"
        mkdir -p $q/tmp/qemu && cp /tests/qemu/*.py $q/tmp/qemu/
        chroot $q python3 /tmp/qemu/test-qemu-edu.py --inside > /tmp/nested.tap 2>&1
        status=$?
        t2=$(cut -d' ' -f1 /proc/uptime)
        awk '/^ok [0-9]+ - / { sub(/^ok [0-9]+ - /, ""); print "VMTAP: ok - nested QEMU: " $0; next }
             /^not ok [0-9]+ - / { sub(/^not ok [0-9]+ - /, ""); print "VMTAP: not ok - nested QEMU: " $0; next }
             /^# timing: / { sub(/^# timing: /, ""); print "VMBENCH: nested QEMU: " $0; next }
             { print "VMLOG: nested: " $0 }' /tmp/nested.tap
        tap $status "nested QEMU: the qtest edu DMA round trip passes inside the VM"
        echo "VMBENCH: nested QEMU: the whole nested test took $(echo "$t1 $t2" | awk '{ printf "%.1f", $2 - $1 }') s"
        chroot $q python3 /tmp/qemu/qemu-startup.py --inside --runs 3 2>&1 | sed 's/^/VMBENCH: nested /'

        # The same unmodified QEMU with the broker's real edu over vfio-user: vfio-brokerctl run holds
        # the container (root here: no polkitd in this VM, and the nested QEMU runs as root too), the
        # qtest round trip DMAs through the real IOMMU into QEMU's memfd RAM, and QEMU's exit leaves
        # nothing pinned.
        vmpinned() { awk '/^(VmLck|VmPin):/ { kb += $2 } END { print kb + 0 }' /proc/$1/status; }
        start_daemon
        tap $? "nested QEMU + broker: vfio-brokerd --backend=vfio starts again"
        edu=$(ls /sys/bus/pci/drivers/vfio-pci | grep '^0000:' | head -n 1)
        pinned0=$(vmpinned $DAEMON_PID)
        $prefix/bin/vfio-brokerctl run --device $edu --socket $q/tmp/edu.sock --label nested -- sleep 600 \
                > /tmp/run.log 2>&1 &
        RUN_PID=$!
        i=0
        while [ ! -S $q/tmp/edu.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        [ -S $q/tmp/edu.sock ]
        tap $? "nested QEMU + broker: vfio-brokerctl run serves $edu on a socket in the tree"
        # --broker-pid, --dmar: when QEMU unmaps an IOVA at run time (the ivshmem BAR of check_unmap),
        # the broker unpins it and the edu's DMA there is a DMAR fault.
        chroot $q python3 /tmp/qemu/test-qemu-edu.py --inside --user 0:0 --broker-pid $DAEMON_PID --dmar \
                --device '{"driver":"vfio-user-pci","id":"vfu0","socket":{"type":"unix","path":"/tmp/edu.sock"}}' \
                > /tmp/nested-broker.tap 2>&1
        status=$?
        awk '/^ok [0-9]+ - / { sub(/^ok [0-9]+ - /, ""); print "VMTAP: ok - nested QEMU + broker: " $0; next }
             /^not ok [0-9]+ - / { sub(/^not ok [0-9]+ - /, ""); print "VMTAP: not ok - nested QEMU + broker: " $0; next }
             /^# timing: / { sub(/^# timing: /, ""); print "VMBENCH: nested QEMU + broker: " $0; next }
             { print "VMLOG: nested+broker: " $0 }' /tmp/nested-broker.tap
        tap $status "nested QEMU + broker: the unmodified QEMU DMAs with the real edu through the broker"
        i=0
        while [ "$(vmpinned $DAEMON_PID)" -gt "$pinned0" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        [ "$(vmpinned $DAEMON_PID)" -le "$pinned0" ]
        tap $? "nested QEMU + broker: QEMU's exit leaves nothing pinned ($(vmpinned $DAEMON_PID) kB, was $pinned0 kB)"
        kill -TERM $RUN_PID
        wait $RUN_PID
        [ $? = 143 ]
        tap $? "nested QEMU + broker: SIGTERM to vfio-brokerctl run ends its VMM, and the run with its status"
        sed 's/^/VMLOG: run: /' /tmp/run.log
        tail -n 40 /tmp/daemon.log | sed 's/^/VMLOG: nested daemon: /'
        dmesg | grep -i -E 'DMAR' | tail -n 5 | sed 's/^/VMLOG: dmesg: /'
        kill -TERM $DAEMON_PID
        wait $DAEMON_PID
        umount $q/tmp $q/proc $q
fi
