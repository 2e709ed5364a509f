#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The broker's main job, end to end, on this machine: a private system-like D-Bus (dbus-daemon with
# the project's bus policy), vfio-brokerd on the sim backend, and a mini VMM that creates a
# container, attaches a VFIO group, maps its memfd guest RAM and opens a device, while the balloon
# state follows. Needs no VFIO hardware and changes nothing on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

scripts/install-deps.sh
builddir=${BUILDDIR:-build}
[ -f "$builddir/build.ninja" ] || meson setup "$builddir" >/dev/null
meson compile -C "$builddir" >/dev/null

tmp=$(mktemp -d)
pids=()
cleanup() {
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        rm -rf "$tmp"
}
trap cleanup EXIT

sed -e "s|@SOCKET@|$tmp/system_bus_socket|" -e "s|@POLICY@|$top/systemd/org.vfiobroker.Broker1.conf|" \
        tests/system-bus.conf.in > "$tmp/bus.conf"

echo "== A private system bus with the project's policy ($tmp/system_bus_socket)"
exec 5> "$tmp/address"
dbus-daemon --nofork --config-file="$tmp/bus.conf" --print-address=5 &
pids+=($!)
exec 5>&-
for _ in $(seq 100); do [ -s "$tmp/address" ] && break; sleep 0.05; done
export DBUS_SYSTEM_BUS_ADDRESS=$(head -n 1 "$tmp/address")

echo "== vfio-brokerd --backend=sim"
"$builddir/daemon/vfio-brokerd" --backend=sim ${CONFIG:+--config="$CONFIG"} 2>&1 | sed -u 's/^/   [daemon] /' &
pids+=($!)
for _ in $(seq 200); do
        busctl --system status org.vfiobroker.Broker1 >/dev/null 2>&1 && break
        sleep 0.05
done

echo "== busctl --system tree org.vfiobroker.Broker1"
busctl --system tree org.vfiobroker.Broker1
echo "== busctl --system introspect org.vfiobroker.Broker1 /org/vfiobroker/Broker1/group/1"
busctl --system introspect org.vfiobroker.Broker1 /org/vfiobroker/Broker1/group/1 org.vfiobroker.Broker1.Group

echo "== vfio-brokerctl status / groups"
"$builddir/client/vfio-brokerctl" status
"$builddir/client/vfio-brokerctl" groups

echo "== a balloon agent follows the Manager's BalloonInhibited (GLib/GDBus)"
"$builddir/client/vfio-broker-balloon-agent" --count=2 \
        --exec='echo "   [agent action] balloon inflation $([ $VFIO_BROKER_BALLOON_INHIBITED = 1 ] && echo paused || echo allowed)"' \
        > "$tmp/agent.log" 2>&1 &
agent=$!
for _ in $(seq 100); do grep -q '^state' "$tmp/agent.log" && break; sleep 0.05; done

echo "== the mini VMM (libvfio-broker)"
mkfifo "$tmp/hold"
"$builddir/client/mini-vmm" --label=demo-vm --group=1 --ram-mib=256 --virtio-mem-mib=64 --hold="$tmp/hold" > "$tmp/vmm.log" 2>&1 &
vmm=$!
for _ in $(seq 400); do grep -q '^holding' "$tmp/vmm.log" && break; sleep 0.05; done
sed 's/^/   [vmm] /' "$tmp/vmm.log"
echo "== while the VMM holds its container: busctl introspect"
container=$(busctl --system tree --list org.vfiobroker.Broker1 | grep container/ | head -n 1)
busctl --system introspect org.vfiobroker.Broker1 "$container" org.vfiobroker.Broker1.Container | grep -E '^NAME|property' || true
echo "== vfio-brokerctl list / show while the VMM holds its container"
"$builddir/client/vfio-brokerctl" list
"$builddir/client/vfio-brokerctl" show "${container##*/}"
lines=$(wc -l < "$tmp/vmm.log")
echo x > "$tmp/hold"
wait "$vmm"
tail -n +$((lines + 1)) "$tmp/vmm.log" | sed 's/^/   [vmm] /'
wait "$agent"
echo "== what the balloon agent saw"
sed 's/^/   [agent] /' "$tmp/agent.log"
echo "== done: BalloonInhibited is $(busctl --system get-property org.vfiobroker.Broker1 /org/vfiobroker/Broker1 org.vfiobroker.Broker1.Manager BalloonInhibited)"

if [ "${VM:-0}" = 1 ]; then
        echo "== the same on the real kernel: the test VM (QEMU, intel-iommu, edu devices bound to vfio-pci)"
        [ -f "$builddir/build.ninja" ] && meson configure "$builddir" -Dvm_tests=enabled >/dev/null
        meson compile -C "$builddir" >/dev/null
        tests/vm/run-vm-tests.sh "$builddir" 2>/dev/null | grep -E '^(ok|not ok|#)'
fi
