#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The broker as an administrator meets it: busctl and gdbus against the running daemon (sim).
set -u
mini_vmm=$1
n=0
failed=0
check() { # description, command...
        local what=$1
        shift
        n=$((n + 1))
        if "$@" >/tmp/busctl-test.$$ 2>&1; then
                echo "ok $n - $what"
        else
                echo "not ok $n - $what"
                sed 's/^/#   /' /tmp/busctl-test.$$
                failed=$((failed + 1))
        fi
}
B=org.vfiobroker.Broker1
R=/org/vfiobroker/Broker1

check "busctl tree lists the six default sim groups" \
        bash -c "[ \$(busctl --system tree --list $B | grep -c '/group/[0-9]') -eq 6 ]"
check "busctl introspect shows the Group properties with their flags" \
        bash -c "busctl --system introspect $B $R/group/5 $B.Group | grep -E '^\.Devices +property +as +2 \"0000:00:05.0\" \"0000:00:05.1\"' &&
                 busctl --system introspect $B $R/group/1 $B.Group | grep -E '^\.Id +property +u +1 +const'"
check "busctl get-property reads the Manager" \
        bash -c "busctl --system get-property $B $R $B.Manager Backend | grep -x 's \"sim\"' &&
                 busctl --system get-property $B $R $B.Manager BalloonInhibited | grep -x 'b false'"
check "gdbus introspect (GDBus over the same bus) sees the Manager and ObjectManager" \
        bash -c "gdbus introspect --system --dest $B --object-path $R | grep -q 'interface org.vfiobroker.Broker1.Manager' &&
                 gdbus introspect --system --dest $B --object-path $R | grep -q 'interface org.freedesktop.DBus.ObjectManager'"

check "the bus policy lets only root own org.vfiobroker.Broker1" \
        bash -c "setpriv --reuid=65534 --regid=65534 --clear-groups busctl --system call org.freedesktop.DBus \
                 /org/freedesktop/DBus org.freedesktop.DBus RequestName su $B.Impostor 0 2>&1 | grep -q -i 'denied' &&
                 setpriv --reuid=65534 --regid=65534 --clear-groups busctl --system call org.freedesktop.DBus \
                 /org/freedesktop/DBus org.freedesktop.DBus RequestName su $B 0 2>&1 | grep -q -i 'denied'"
check "everyone may call it: an unprivileged user reads the Manager" \
        bash -c "setpriv --reuid=65534 --regid=65534 --clear-groups busctl --system get-property $B $R $B.Manager Backend |
                 grep -x 's \"sim\"'"

# A container created by busctl lives as long as busctl's connection: it is gone right after.
path=$(busctl --system call $B $R $B.Manager CreateContainer 'a{sv}' 1 Label s from-busctl | awk '{ print $2 }' | tr -d '"')
check "busctl call CreateContainer returns a container path" bash -c "[[ '$path' == $R/container/* ]]"
check "the container closes when busctl's connection ends" \
        bash -c "for i in \$(seq 50); do busctl --system tree --list $B | grep -q -x '$path' || exit 0; sleep 0.1; done; exit 1"

check "gdbus call of a method with bad input gets the SPEC error" \
        bash -c "gdbus call --system --dest $B --object-path $R --method $B.Manager.CreateContainer \"{'Colour': <'red'>}\" 2>&1 |
                 grep -q 'org.freedesktop.DBus.Error.InvalidArgs'"

# A VMM holding a container; root inspects and acts as administrator.
fifo=$(mktemp -u)
mkfifo "$fifo"
"$mini_vmm" --label=vm-busctl --group=2 --hold="$fifo" > /tmp/busctl-vmm.$$ 2>&1 &
vmm=$!
for _ in $(seq 100); do grep -q '^holding' /tmp/busctl-vmm.$$ && break; sleep 0.1; done
c=$(busctl --system tree --list $B | grep '/container/' | head -n 1)
check "busctl shows the VMM's container: Label, Groups, Mappings, BalloonInhibited" \
        bash -c "busctl --system get-property $B $c $B.Container Label | grep -x 's \"vm-busctl\"' &&
                 busctl --system get-property $B $c $B.Container Groups | grep -x 'au 1 2' &&
                 busctl --system get-property $B $c $B.Container Mappings | grep -x 'u 1' &&
                 busctl --system get-property $B $c $B.Container BalloonInhibited | grep -x 'b true' &&
                 busctl --system get-property $B $R/group/2 $B.Group Container | grep -x \"o \\\"$c\\\"\""
check "GetManagedObjects lists the container with its properties" \
        bash -c "busctl --system call $B $R org.freedesktop.DBus.ObjectManager GetManagedObjects | grep -q '$c'"
check "root, not the owner, may act as administrator (Unmap of nothing is NotMapped, not AccessDenied)" \
        bash -c "busctl --system call $B $c $B.Container Unmap tt 0x40000000 4096 2>&1 | grep -q 'Nothing is mapped'"
check "an unprivileged user is AccessDenied on another's container" \
        bash -c "setpriv --reuid=65534 --regid=65534 --clear-groups busctl --system call $B $c $B.Container Close 2>&1 |
                 grep -q -i 'access denied\|AccessDenied\|not authorized'"
echo go > "$fifo"
wait $vmm
check "the VMM ran to completion" grep -q '^closed the container' /tmp/busctl-vmm.$$
rm -f "$fifo" /tmp/busctl-vmm.$$ /tmp/busctl-test.$$

echo "1..$n"
[ $failed -eq 0 ]
