#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Runs inside the system VM (a Debian 12 booted with systemd as PID 1) as vfio-broker-tests.service.
# Results go to the second serial port as "VMTAP: ok|not ok - name" lines; everything else to the
# console. See README.md for what each step proves.
set -u
T=/usr/local/lib/vfio-broker-tests
export LD_LIBRARY_PATH=$T/lib
export ASAN_OPTIONS=detect_leaks=0
exec 9>/dev/ttyS1
tap() { # status name
        if [ "$1" = 0 ]; then echo "VMTAP: ok - $2" >&9; else echo "VMTAP: not ok - $2" >&9; fi
        echo "TEST $([ "$1" = 0 ] && echo ok || echo FAILED): $2"
}
note() { echo "VMTAP: # $*" >&9; echo "# $*"; }
wait_for() { # seconds command...: by the clock, since every process start is slow under TCG
        local deadline=$((SECONDS + $1))
        shift
        while :; do
                "$@" >/dev/null 2>&1 && return 0
                [ $SECONDS -lt $deadline ] || return 1
                sleep 0.2
        done
}
bus=$(cat $T/bus)
svc=vfio-brokerd.service
B=org.vfiobroker.Broker1
P=/org/vfiobroker/Broker1
pinned() { awk '/^nr_foll_pin_acquired/ { a = $2 } /^nr_foll_pin_released/ { r = $2 } END { print a - r }' /proc/vmstat; }
# /proc/vmstat sums per-CPU counters that are folded only past a threshold, so a reading can be off by a
# few hundred pages either way: the VM's 2048 pinned pages count as pinned from 1536 on (unpinned, the
# difference would be near 0).
PINNED_8MIB=1536
mainpid() { systemctl show -P MainPID $svc; }
journal_has() { # MESSAGE_ID FIELD=VALUE...: the daemon logged that event with all those fields
        local id=$1
        shift
        journalctl -q -o cat _SYSTEMD_UNIT=$svc MESSAGE_ID="$id" "$@" 2>/dev/null | grep -q .
}
ID_CREATED=74955c1bc5dd4c6d9bc07e04ebe0c190
ID_CLOSED=3ab40f824bd7420f8739d3b229f5de86
ID_ATTACHED=17da396858d34cffb34f48416a637b62
ID_DENIED=a1b2a145e1db4c878ab8402c780e61b3
ID_RESTORED=9746c766acef4a62a62fc9c6c7d1d30f
ID_RELOADED=66382263514c4644997e3037326db5cd

note "$(systemctl --version | head -n 1), kernel $(uname -r), system bus $bus"
groups=($(ls /dev/vfio | grep -v '^vfio$' | sort -n))
g1=${groups[0]:-}
g2=${groups[1]:-}
d1=$(ls /sys/kernel/iommu_groups/$g1/devices 2>/dev/null | head -n 1)
d2=$(ls /sys/kernel/iommu_groups/$g2/devices 2>/dev/null | head -n 1)
[ -n "$d1" ] && [ -n "$d2" ] && [ -e /dev/vfio/vfio ]
tap $? "two edu devices are bound to vfio-pci (groups $g1 $d1, $g2 $d2)"

if [ "$bus" = dbus-broker ]; then
        systemctl is-active --quiet dbus-broker.service && ! pgrep -x dbus-daemon >/dev/null
else
        systemctl is-active --quiet dbus.service && pgrep -x dbus-daemon >/dev/null
fi
tap $? "the system bus is $bus"

# Users for the polkit tests: alice is allowed by a rule, bob has only the defaults (no active session:
# no), carol gets a limit by reload.
for u in alice bob carol; do useradd -m $u; done
mkdir -p /etc/polkit-1/rules.d
cat > /etc/polkit-1/rules.d/60-vfio-broker-test.rules <<'RULES'
polkit.addRule(function(action, subject) {
    if (action.id == "org.vfiobroker.broker1.attach-group" && subject.user == "alice")
        return polkit.Result.YES;
});
RULES

# --- install ------------------------------------------------------------------------------------------
apt=(apt-get install -y --no-install-recommends -o DPkg::Options::=--force-unsafe-io)
"${apt[@]}" /root/debs/vfio-broker_*.deb /root/debs/libvfio-broker0_*.deb \
        /root/debs/libvfio-broker-glib0_*.deb > /tmp/apt.log 2>&1
tap $? "apt installs vfio-broker, libvfio-broker0 and libvfio-broker-glib0 offline"
sed 's/^/apt: /' /tmp/apt.log | tail -n 15
tap $([ "$(systemctl is-enabled $svc)" = enabled ]; echo $?) "the unit is enabled at install"
wait_for 30 systemctl is-active --quiet $svc
tap $? "the package started the daemon (the host has /dev/vfio/vfio)"
busctl get-property $B $P $B.Manager Backend 2>&1 | grep -q vfio-type1
tap $? "the installed daemon serves the vfio-type1 backend on the system bus"

# --- D-Bus activation ---------------------------------------------------------------------------------
systemctl stop $svc
! systemctl is-active --quiet $svc
tap $? "systemctl stop: the daemon is inactive"
busctl get-property $B $P $B.Manager Version > /tmp/version 2>&1
tap $? "D-Bus activation: the first call to $B is answered ($(cat /tmp/version))"
systemctl is-active --quiet $svc
tap $? "D-Bus activation started $svc"

# --- a VMM DMAing ----------------------------------------------------------------------------------------
mkdir -p /run/vmm
rm -f /run/vmm/cmd /run/vmm/ack
mkfifo /run/vmm/cmd /run/vmm/ack
cmd() { timeout 120 bash -c 'echo "$1" > /run/vmm/cmd && cat /run/vmm/ack' _ "$1" 2>/dev/null || echo "(no answer)"; }
field() { echo "$1" | sed -n "s/.*$2=\([0-9]*\).*/\1/p"; }
start_vmm() {
        : > /run/vmm/log
        $T/sysvm-vmm serve $g1 $d1 /run/vmm > /run/vmm/log 2>&1 &
        vmm=$!
        wait_for 120 grep -q '^serving' /run/vmm/log
}
baseline=$(pinned)
start_vmm
tap $? "a VMM maps 8 MiB of memfd RAM and its edu DMAs through the broker"
cat /run/vmm/log
path=$(sed -n 's/^serving //p' /run/vmm/log)
cid=${path##*/}
tap $([ $(( $(pinned) - baseline )) -ge $PINNED_8MIB ]; echo $?) "8 MiB are pinned ($(( $(pinned) - baseline )) pages)"
wait_for 10 bash -c "systemctl show -P StatusText $svc | grep -qx '1 container, 1 group attached, 8.0 MiB pinned'"
tap $? "STATUS= says what the broker holds: \"$(systemctl show -P StatusText $svc)\""
wait_for 10 journal_has $ID_CREATED CONTAINER_ID=$cid USER_ID=0 CONTAINER_LABEL=system-vm
tap $? "journal: container created, MESSAGE_ID=$ID_CREATED with CONTAINER_ID, USER_ID and CONTAINER_LABEL"
wait_for 10 journal_has $ID_ATTACHED CONTAINER_ID=$cid USER_ID=0 VFIO_GROUP=$g1
tap $? "journal: group attached, MESSAGE_ID=$ID_ATTACHED with CONTAINER_ID, USER_ID and VFIO_GROUP"

probe=0
survived() { # what old-pid
        local what=$1 old=$2 s1 s2 p
        wait_for 60 bash -c "p=\$(systemctl show -P MainPID $svc); [ \"\$p\" != 0 ] && [ \"\$p\" != $old ] && systemctl is-active --quiet $svc"
        tap $? "$what: systemd runs a new vfio-brokerd (pid $old -> $(mainpid))"
        wait_for 60 bash -c "busctl get-property $B $path $B.Container Mappings | grep -qx 'u 1'"
        tap $? "$what: the container is back on the bus with its mapping"
        s1=$(cmd stats)
        sleep 3
        s2=$(cmd stats)
        [ "$(field "$s2" fail)" = 0 ] && [ "$(field "$s2" ok)" -gt "$(field "$s1" ok)" ]
        tap $? "$what: the device kept DMAing, no round trip failed ($s1 -> $s2)"
        probe=$((probe + 1))
        p=$(cmd "probe $probe")
        [ "$p" = "probe ok" ]
        tap $? "$what: the broker still runs the container: Map, DMA into the new mapping, Unmap ($p)"
        tap $([ $(( $(pinned) - baseline )) -ge $PINNED_8MIB ]; echo $?) \
                "$what: the VM's pages stayed pinned ($(( $(pinned) - baseline )) pages)"
}

# --- crash ------------------------------------------------------------------------------------------
old=$(mainpid)
systemctl kill -s KILL $svc
survived "systemctl kill -s KILL" $old
wait_for 10 journal_has $ID_RESTORED COUNT=1
tap $? "journal: restore done, MESSAGE_ID=$ID_RESTORED with COUNT=1"

# --- package upgrade --------------------------------------------------------------------------------
old=$(mainpid)
"${apt[@]}" /root/debs/upgrade/vfio-broker_*.deb > /tmp/apt.log 2>&1
tap $? "apt installs the upgrade $(cat $T/upgrade-version)"
sed 's/^/apt: /' /tmp/apt.log | tail -n 8
[ "$(dpkg-query -W -f '${Version}' vfio-broker)" = "$(cat $T/upgrade-version)" ]
tap $? "dpkg has vfio-broker $(dpkg-query -W -f '${Version}' vfio-broker)"
survived "package upgrade" $old
exe=$(readlink /proc/$(mainpid)/exe)
[ "$exe" = /usr/sbin/vfio-brokerd ]
tap $? "package upgrade: the daemon runs the upgraded binary ($exe)"

# --- reload -----------------------------------------------------------------------------------------
out=$(setpriv --reuid=carol --regid=carol --init-groups $T/sysvm-vmm create 2>&1)
[ "$out" = created ]
tap $? "carol may create a container before the reload ($out)"
mkdir -p /etc/vfio-broker
echo '{ "limits": { "users": { "carol": { "containers": 0 } } } }' > /etc/vfio-broker/config.json
old=$(mainpid)
s1=$(cmd stats)
systemctl reload $svc
tap $? "systemctl reload succeeds"
wait_for 10 journal_has $ID_RELOADED
tap $? "journal: configuration reloaded, MESSAGE_ID=$ID_RELOADED"
[ "$(mainpid)" = "$old" ]
tap $? "systemctl reload: the same process ($old) goes on"
out=$(setpriv --reuid=carol --regid=carol --init-groups $T/sysvm-vmm create 2>&1)
echo "$out" | grep -q QuotaExceeded
tap $? "the reloaded limit applies: carol's CreateContainer fails ($out)"
sleep 2
s2=$(cmd stats)
[ "$(field "$s2" fail)" = 0 ] && [ "$(field "$s2" ok)" -gt "$(field "$s1" ok)" ]
tap $? "systemctl reload: the device kept DMAing ($s1 -> $s2)"
p=$(cmd "probe 9")
[ "$p" = "probe ok" ]
tap $? "systemctl reload: Map, DMA, Unmap still work ($p)"
rm -f /etc/vfio-broker/config.json
systemctl reload $svc

# --- polkit -----------------------------------------------------------------------------------------
out=$(setpriv --reuid=alice --regid=alice --init-groups $T/sysvm-vmm attach $g2 2>&1)
[ "$out" = attached ]
tap $? "alice, allowed by a polkit rule, attaches group $g2 ($out)"
out=$(setpriv --reuid=bob --regid=bob --init-groups $T/sysvm-vmm attach $g2 2>&1)
echo "$out" | grep -q AccessDenied
tap $? "bob, without a rule, is denied ($out)"
wait_for 10 journal_has $ID_DENIED USER_ID=$(id -u bob) POLKIT_ACTION=org.vfiobroker.broker1.attach-group \
        VFIO_GROUP=$g2 DEVICE=$d2 PRIORITY=5
tap $? "journal: authorization denied, MESSAGE_ID=$ID_DENIED with USER_ID, POLKIT_ACTION, VFIO_GROUP and DEVICE"
journalctl -q -o verbose _SYSTEMD_UNIT=$svc MESSAGE_ID=$ID_DENIED | grep -v '^ *_' | sed 's/^/journal: /'

# --- alice runs an unmodified QEMU with the real edu, unprivileged -------------------------------------
# Debian testing's QEMU (the vfio-user client) from the tree on the read-only second virtio disk, driven
# by tests/qemu's qtest driver: alice (allowed to attach by the polkit rule above) runs
# `vfio-brokerctl run -- unshare --user --map-root-user --mount ... chroot TREE python3 test-qemu-edu.py`,
# so QEMU runs as alice (root of her own user namespace only): no root, no /dev/vfio, no memlock.
q=/mnt/qemu-root
alice_uid=$(id -u alice)
if [ -f $T/qemu/unavailable ]; then
        tap 1 "alice's QEMU: no Debian testing QEMU tree to run: $(cat $T/qemu/unavailable)"
else
        wait_for 30 findfs LABEL=qemu-root
        mkdir -p $q && mount -t ext4 -o ro "$(findfs LABEL=qemu-root)" $q
        tap $? "alice's QEMU: the Debian testing tree ($(cat $q/.vfio-broker-complete 2>/dev/null)) mounts read-only"
        # alice's writable directory, bound on the tree's /tmp inside her mount namespace: the scripts,
        # QEMU's scratch files and the vfio-user socket (bound by vfio-brokerctl run as alice).
        qdir=$(mktemp -d /var/tmp/alice-qemu.XXXXXX)
        cp -r $T/qemu $qdir/qemu
        chown -R alice:alice $qdir
        device='{"driver":"vfio-user-pci","id":"vfu0","socket":{"type":"unix","path":"/tmp/edu.sock"}}'
        # /proc by a recursive bind (a fresh proc would need a PID namespace): the driver names QEMU's
        # fds through /proc/self/fd.
        inner='mount --bind "$1" "$2/tmp" && mount --rbind /proc "$2/proc" && exec chroot "$2" python3 /tmp/qemu/test-qemu-edu.py --inside --user 0:0 --device "$3"'
        # The test's DMAs to and from 0xc000000 (outside guest RAM) must be stopped by the real IOMMU.
        faults() { dmesg | grep -c "DMAR: \[DMA $1 .*Request device \[${d2#0000:}\] fault addr 0xc000000"; }
        wfaults0=$(faults Write) rfaults0=$(faults Read)
        pin0=$(pinned)
        t0=$SECONDS
        setpriv --reuid=alice --regid=alice --init-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/home/alice \
                timeout 600 vfio-brokerctl run --device $d2 --socket $qdir/edu.sock --label alice-qemu -- \
                unshare --user --map-root-user --mount sh -c "$inner" sh $qdir $q "$device" > /tmp/alice-qemu.tap 2>&1 &
        run=$!
        # What the broker and the kernel show while QEMU runs.
        cpath= cuid= maxmapped=0 inhibited= maxpin=0
        while kill -0 $run 2>/dev/null; do
                if [ -z "$cpath" ]; then
                        for p in $(busctl --list tree $B 2>/dev/null | grep "^$P/container/"); do
                                [ "$(busctl get-property $B $p $B.Container Label 2>/dev/null)" = 's "alice-qemu"' ] && cpath=$p
                        done
                fi
                if [ -n "$cpath" ]; then
                        v=$(busctl get-property $B $cpath $B.Container UID 2>/dev/null) && cuid=${v#u }
                        v=$(busctl get-property $B $cpath $B.Container MappedBytes 2>/dev/null) && v=${v#t } &&
                                [ "$v" -gt $maxmapped ] && maxmapped=$v && inhibited=$(busctl get-property $B $cpath $B.Container BalloonInhibited 2>/dev/null)
                fi
                d=$(( $(pinned) - pin0 ))
                [ $d -gt $maxpin ] && maxpin=$d
                sleep 0.3
        done
        wait $run
        status=$?
        note "alice's QEMU: the run took $((SECONDS - t0)) s"
        awk '/^ok [0-9]+ - / { sub(/^ok [0-9]+ - /, ""); print "ok " $0; next }
             /^not ok [0-9]+ - / { sub(/^not ok [0-9]+ - /, ""); print "not ok " $0; next }
             { print "log " $0 }' /tmp/alice-qemu.tap | while read -r kind line; do
                case "$kind" in
                ok)  tap 0 "alice's QEMU: $line" ;;
                not) tap 1 "alice's QEMU: ${line#ok }" ;;
                *)   echo "alice-qemu: $line" ;;
                esac
        done
        [ "$cuid" = "$alice_uid" ]
        tap $? "alice's QEMU: vfio-brokerctl run made a container of alice's uid $alice_uid (UID ${cuid:-none}, $cpath)"
        [ $maxmapped -ge $((128 << 20)) ] && [ "$inhibited" = "b true" ]
        tap $? "alice's QEMU: its 128 MiB of guest RAM is the container's mapping while it runs (MappedBytes up to $maxmapped, BalloonInhibited ${inhibited:-unknown})"
        [ $maxpin -ge 32768 ]
        tap $? "alice's QEMU: the kernel pinned its guest RAM for the real IOMMU ($maxpin pages at most)"
        [ $status = 0 ]
        tap $? "alice's QEMU: the qtest edu round trip passes and vfio-brokerctl run exits with QEMU's driver's status ($status)"
        wfaults=$(( $(faults Write) - wfaults0 )) rfaults=$(( $(faults Read) - rfaults0 ))
        [ $wfaults -gt 0 ] && [ $rfaults -gt 0 ]
        tap $? "alice's QEMU: the IOMMU faulted the edu's DMA write and read at 0xc000000, outside guest RAM ($wfaults and $rfaults DMAR faults)"
        wait_for 20 journal_has $ID_CREATED USER_ID=$alice_uid CONTAINER_LABEL=alice-qemu
        tap $? "alice's QEMU: journal: container created, USER_ID=$alice_uid CONTAINER_LABEL=alice-qemu"
        wait_for 20 bash -c "! busctl get-property $B ${cpath:-$P/container/none} $B.Container UID"
        tap $? "alice's QEMU: no container is left after the run"
        wait_for 20 bash -c "[ \$(( \$(awk '/^nr_foll_pin_acquired/ { a = \$2 } /^nr_foll_pin_released/ { r = \$2 } END { print a - r }' /proc/vmstat) - $pin0 )) -le 0 ]"
        tap $? "alice's QEMU: its exit leaves nothing pinned ($(( $(pinned) - pin0 )) pages over before the run)"
        umount $q
        rm -rf $qdir
fi

# --- discardable regions and dirty tracking across restarts, under systemd ---------------------------------
# tests/vm/test-restart-dma, which tests/vm runs under a supervisor of its own, here with systemd's fd
# store: its harness commands become systemctl kill (Restart=always starts the next instance).
mkdir -p /run/harness
rm -f /run/harness/cmd /run/harness/ack
mkfifo /run/harness/cmd /run/harness/ack
harness() {
        local line answer old=0
        while read -r line < /run/harness/cmd; do
                case "$line" in
                kill9) old=$(mainpid); systemctl kill -s KILL $svc; answer="systemctl kill -s KILL, pid $old" ;;
                term)  old=$(mainpid); systemctl kill -s TERM $svc; answer="systemctl kill -s TERM, pid $old" ;;
                restart) old=$(mainpid); systemctl restart $svc; answer="systemctl restart, pid $old" ;;
                start)
                        if wait_for 60 bash -c "p=\$(systemctl show -P MainPID $svc); [ \"\$p\" != 0 ] && [ \"\$p\" != $old ] &&
                                                busctl get-property $B $P $B.Manager Version"; then
                                answer="started by systemd, pid $(mainpid)"
                        else
                                answer="not restarted"
                        fi ;;
                *) answer="unknown command" ;;
                esac
                echo "$answer" > /run/harness/ack
        done
}
harness &
harness_pid=$!
VFIO_BROKER_HARNESS=/run/harness $T/test-restart-dma $g2 $d2 >&9 2>/tmp/restart-dma.log
tap $? "tests/vm/test-restart-dma passes under systemd (discard and dirty tracking through kill -9 and SIGTERM)"
sed 's/^/restart-dma: /' /tmp/restart-dma.log
# A device served over vfio-user (the second edu, free again) keeps its session through the same restarts,
# with systemd's fd store keeping the listener, the client's socket and the device fd.
VFIO_BROKER_HARNESS=/run/harness VFIO_USER_RESTARTS="kill9 term restart" $T/test-vfio-user-restart $g2 $d2 \
        >&9 2>/tmp/vfio-user-restart.log
tap $? "tests/vm/test-vfio-user-restart passes under systemd (a vfio-user session through kill -9, SIGTERM and systemctl restart)"
sed 's/^/vfio-user-restart: /' /tmp/vfio-user-restart.log
kill $harness_pid 2>/dev/null
s1=$(cmd stats)
[ "$(field "$s1" fail)" = 0 ]
tap $? "meanwhile the first VMM's device kept DMAing ($s1)"

# --- what a restart does on systemd 252 ---------------------------------------------------------------
# First systemd itself, with a probe service that stores one fd: how many fds does each new start get?
rm -f /run/fdprobe.log
systemd-run --quiet --unit=fdprobe -p Type=notify -p FileDescriptorStoreMax=4 -p Restart=always \
        -p RestartSec=100ms --setenv=LD_LIBRARY_PATH=$T/lib --setenv=ASAN_OPTIONS=detect_leaks=0 \
        $T/fdstore-probe /run/fdprobe.log
systemctl kill -s KILL fdprobe.service
wait_for 20 bash -c '[ $(wc -l < /run/fdprobe.log) -ge 2 ]'
systemctl restart fdprobe.service
wait_for 20 bash -c '[ $(wc -l < /run/fdprobe.log) -ge 3 ]'
systemctl stop fdprobe.service
# A transient unit is gone once stopped: the same one again.
systemd-run --quiet --unit=fdprobe -p Type=notify -p FileDescriptorStoreMax=4 -p Restart=always \
        -p RestartSec=100ms --setenv=LD_LIBRARY_PATH=$T/lib --setenv=ASAN_OPTIONS=detect_leaks=0 \
        $T/fdstore-probe /run/fdprobe.log
wait_for 20 bash -c '[ $(wc -l < /run/fdprobe.log) -ge 4 ]'
systemctl stop fdprobe.service
got=$(tr '\n' ' ' < /run/fdprobe.log)
[ "$got" = "0 1 1 0 " ]
tap $? "systemd: the fd store survives systemctl kill and systemctl restart, systemctl stop empties it (fds at each start: $got)"

# So a restart is a hand-over too.
old=$(mainpid)
systemctl restart $svc
tap $? "systemctl restart succeeds"
survived "systemctl restart" $old

# --- stop leaves nothing ----------------------------------------------------------------------------
systemctl stop $svc
! systemctl is-active --quiet $svc
tap $? "systemctl stop: the daemon is inactive"
wait_for 20 bash -c "[ \$(( \$(awk '/^nr_foll_pin_acquired/ { a = \$2 } /^nr_foll_pin_released/ { r = \$2 } END { print a - r }' /proc/vmstat) - $baseline )) -le 0 ]"
tap $? "systemctl stop: nothing stays pinned, though the VMM still holds its device fd ($(( $(pinned) - baseline )) pages)"
s1=$(cmd stats)
sleep 2
s2=$(cmd stats)
[ "$(field "$s2" fail)" -gt "$(field "$s1" fail)" ]
tap $? "systemctl stop: the device's DMA no longer lands in the VM's memory ($s1 -> $s2)"
[ ! -e /run/vfio-broker ] || [ -z "$(ls -A /run/vfio-broker)" ]
tap $? "systemctl stop: no state is left in /run/vfio-broker"
journal_has $ID_CLOSED CONTAINER_ID=$cid USER_ID=0
tap $? "journal: container closed, MESSAGE_ID=$ID_CLOSED with CONTAINER_ID and USER_ID"
cmd quit > /dev/null
wait $vmm

# --- a daemon that cannot start says why once ----------------------------------------------------------
echo '{ "limits": { "default": { "containers": "many" } } }' > /etc/vfio-broker/config.json
systemctl start $svc 2>/dev/null
sleep 2
result=$(systemctl show -P Result $svc) status=$(systemctl show -P ExecMainStatus $svc)
restarts=$(systemctl show -P NRestarts $svc) state=$(systemctl show -P ActiveState $svc)
[ "$state" = failed ] && [ "$status" = 6 ] && [ "$restarts" = 0 ]
tap $? "a bad configuration: the daemon exits 6 and systemd does not restart it ($state, $result, status $status, $restarts restarts)"
n=$(journalctl -q -o cat _SYSTEMD_UNIT=$svc _PID=$(systemctl show -P ExecMainPID $svc) PRIORITY=3 | tee /tmp/why | wc -l)
[ "$n" = 1 ]
tap $? "a bad configuration: the reason is logged once ($(cat /tmp/why))"
rm -f /etc/vfio-broker/config.json
systemctl reset-failed $svc

# --- a host without VFIO --------------------------------------------------------------------------------
# /dev/vfio hidden under an empty tmpfs: the unit is skipped by its condition, so it neither runs nor
# loops. (The caller's activation request then waits for the bus's timeout: neither dbus-daemon nor
# systemd 252 report a skipped or failed activation, systemd issues 21520 and 28877; busctl gives up first.)
mount -t tmpfs tmpfs /dev/vfio
out=$(busctl --timeout=5 get-property $B $P $B.Manager Version 2>&1)
busctl_status=$?
sleep 1
[ $busctl_status != 0 ] && [ "$(systemctl show -P ConditionResult $svc)" = no ] &&
        [ "$(systemctl show -P ActiveState $svc)" = inactive ] && [ "$(systemctl show -P NRestarts $svc)" = 0 ]
tap $? "without /dev/vfio/vfio, D-Bus activation skips the unit by its condition, nothing runs or loops ($out)"
umount /dev/vfio
systemctl reset-failed $svc

# --- the unit's hardening ---------------------------------------------------------------------------
systemd-analyze security --no-pager $svc > /tmp/security 2>&1
level=$(sed -n 's/.*Overall exposure level for vfio-brokerd.service: \([0-9.]*\).*/\1/p' /tmp/security)
note "systemd-analyze security $svc: exposure ${level:-unknown}"
[ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'
tap $? "systemd-analyze security of the installed unit: exposure ${level:-unknown} <= 2.0"

# --- benchmark: bench/vm-map against the packaged daemon under systemd ------------------------------------
# Figures, not a test: the production configuration (Debian's build flags, systemd's fd store, the state
# directory), both edu groups free by now. The two system VMs run at the same time on the host, so the
# figures vary more than the rounds' medians suggest; they come back as "# bench:" lines.
systemctl start $svc
if wait_for 30 systemctl is-active --quiet $svc; then
        # 2 MiB huge pages for the hugetlbfs row (256 MiB of the VM's memory), transparent huge pages for
        # memfds whose VMM asks for them (MADV_HUGEPAGE) for the THP row; both as they were afterwards.
        hugepages_was=$(cat /proc/sys/vm/nr_hugepages)
        thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
        thp_was=$(sed 's/.*\[\(.*\)\].*/\1/' $thp)
        echo 128 > /proc/sys/vm/nr_hugepages
        echo advise > $thp
        $T/vm-map $g1 $g2 1000 > /tmp/vm-map.log 2>&1
        status=$?
        echo "$thp_was" > $thp
        echo "$hugepages_was" > /proc/sys/vm/nr_hugepages
        note "bench: bench/vm-map on $bus, the installed vfio-broker package under systemd (exit status $status)"
        while IFS= read -r line; do note "bench: $line"; done < /tmp/vm-map.log
else
        note "bench: not run, $svc did not start"
fi

journalctl -q -u $svc --no-pager | tail -n 40 | sed 's/^/daemon: /'
echo VMDONE >&9
