#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The system test: a real Debian 12 (systemd as PID 1, polkitd, the system bus) boots under QEMU/TCG with
# the emulated Intel IOMMU and edu DMA devices of tests/vm, installs the vfio-broker .debs built from this
# tree with apt, and runs in-vm.sh: D-Bus activation, a VMM DMAing through crash, upgrade and reload,
# what a restart does on systemd 252, stop, polkit users, the journal, systemd-analyze security.
# It runs twice: the system bus is dbus-daemon, then dbus-broker. One TAP stream on stdout.
#
#   run-system-vm-tests.sh BUILDDIR [dbus-daemon|dbus-broker|SHELL-dbus-daemon]...
#
# Caches (kernel, root file system) live in $VFIO_BROKER_TEST_CACHE (default
# /var/cache/vfio-broker-tests) and are built when missing; only Debian's archive is reached.
set -uo pipefail

builddir=$(cd "$1" && pwd)
shift
buses=("$@")
[ ${#buses[@]} -gt 0 ] || buses=(dbus-daemon dbus-broker)
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
cache=${VFIO_BROKER_TEST_CACHE:-/var/cache/vfio-broker-tests}
work=$builddir/system-vm
timeout=${SYSTEM_VM_TIMEOUT:-900}

n=0
failed=0
bail() { echo "not ok $((n + 1)) - $*"; echo "1..$((n + 1))"; exit 1; }
tap() { # status name
        n=$((n + 1))
        if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi
}
elapsed() { echo $(( $(date +%s) - start )); }
start=$(date +%s)

[ "$(id -u)" = 0 ] || bail "the system VM test needs root (the root file system keeps real owners; mmdebstrap, mkfs.ext4 -d)"
for tool in qemu-system-x86_64 mmdebstrap mkfs.ext4 dpkg-buildpackage dpkg-deb cpio; do
        command -v $tool >/dev/null || bail "$tool is missing (scripts/install-deps.sh installs it)"
done
[ -x /bin/busybox ] || bail "/bin/busybox is missing (apt-get install busybox-static)"

mkdir -p "$work"
kernel=$("$src/tests/vm/fetch-kernel.sh" "$cache" 2>"$work/kernel.log") || bail "cannot fetch the kernel package: $(tail -n 3 "$work/kernel.log")"
echo "# kernel ready ($(elapsed) s)"
kver=$(ls "$kernel/lib/modules" | head -n 1)
vmlinuz=$(ls "$kernel"/boot/vmlinuz-* | head -n 1)
rootfs=$("$here/make-rootfs.sh" "$cache/system-vm" 2>"$work/rootfs.log") || bail "cannot build the root file system: $(tail -n 5 "$work/rootfs.log")"
echo "# kernel $kver, root file system $rootfs ($(elapsed) s)"

# --- the packages: built from this tree, and an "upgrade" of the daemon's package with a higher version --
rm -rf "$work/debs"
DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" "$src/scripts/build-debs.sh" "$work/debs" > "$work/build-debs.log" 2>&1 ||
        bail "building the .debs failed: $(tail -n 5 "$work/build-debs.log")"
deb=$(ls "$work"/debs/vfio-broker_*.deb)
version=$(dpkg-deb -f "$deb" Version)
upgrade_version=$version+sysvm1
rm -rf "$work/repack" && dpkg-deb -R "$deb" "$work/repack"
sed -i "s/^Version: .*/Version: $upgrade_version/" "$work/repack/DEBIAN/control"
mkdir -p "$work/debs/upgrade"
dpkg-deb -b "$work/repack" "$work/debs/upgrade/" >/dev/null || bail "cannot repack the upgrade .deb"
rm -rf "$work/repack"
echo "# packages $version and upgrade $upgrade_version built ($(elapsed) s)"
if command -v lintian >/dev/null; then
        lintian --fail-on error "$work"/debs/*.changes > "$work/lintian.log" 2>&1
        tap $? "lintian: no errors in the packages ($(grep -c '^[EW]:' "$work/lintian.log") errors and warnings)"
        sed 's/^/# lintian: /' "$work/lintian.log"
else
        tap 1 "lintian: no errors in the packages (lintian is missing: scripts/install-deps.sh installs it)"
fi

# --- the initramfs: busybox, the modules for /dev/vda (virtio, ext4) and VFIO, in dependency order ----
initrd=$work/initrd.cpio
rm -rf "$work/initramfs" && mkdir -p "$work/initramfs"/{bin,dev,proc,sys,modules,root}
cp /bin/busybox "$work/initramfs/bin/busybox"
install -m 0755 "$here/initramfs-init.sh" "$work/initramfs/init"
moddir=$kernel/lib/modules/$kver
# The package's modules.dep is made at install time; this tree is only unpacked.
if [ ! -s "$moddir/modules.dep" ]; then
        depmod -b "$kernel" "$kver" 2>"$work/depmod.log" || bail "depmod failed: $(tail -n 3 "$work/depmod.log")"
fi
declare -A seen=()
order=()
resolve() { # module name (dashes or underscores) -> its path in modules.dep, dependencies first
        local name=$1 path deps d
        path=$(awk -F: -v a="/$name.ko" -v b="/${name//-/_}.ko" -v c="/${name//_/-}.ko" '
                { p = $1; sub(/\.(xz|zst|gz)$/, "", p) }
                substr(p, length(p) - length(a) + 1) == a || substr(p, length(p) - length(b) + 1) == b ||
                substr(p, length(p) - length(c) + 1) == c { print $1; exit }' "$moddir/modules.dep")
        [ -n "$path" ] || { echo "module $name not in modules.dep" >&2; return 1; }
        [ -z "${seen[$path]:-}" ] || return 0
        seen[$path]=1
        deps=$(awk -F: -v p="$path" '$1 == p { print $2; exit }' "$moddir/modules.dep")
        for d in $deps; do
                d=${d##*/}; d=${d%%.ko*}
                resolve "$d" || return 1
        done
        order+=("$path")
}
for m in virtio_pci virtio_blk crc32c_generic ext4 irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
        resolve "$m" || bail "cannot resolve the kernel module $m"
done
: > "$work/initramfs/modules/order"
for p in "${order[@]}"; do
        b=${p##*/}; b=${b%%.ko*}
        case "$p" in
        *.xz)  xz -dc "$moddir/$p" > "$work/initramfs/modules/$b.ko" ;;
        *.zst) zstd -dc "$moddir/$p" > "$work/initramfs/modules/$b.ko" ;;
        *)     cp "$moddir/$p" "$work/initramfs/modules/$b.ko" ;;
        esac
        echo "$b" >> "$work/initramfs/modules/order"
done
( cd "$work/initramfs" && find . | cpio -o -H newc --quiet ) > "$initrd" || bail "cpio failed"

# --- the test programs and their libraries (a sanitizer build brings its runtimes along) -------------
tools=$work/tools
rm -rf "$tools" && mkdir -p "$tools/lib"
for t in tests/system-vm/sysvm-vmm tests/system-vm/fdstore-probe tests/vm/test-restart-dma \
         tests/vm/test-vfio-user-restart bench/vm-map; do
        [ -x "$builddir/$t" ] || bail "$builddir/$t was not built"
        cp "$builddir/$t" "$tools/"
        ldd "$builddir/$t" | awk '/=> \// { print $3 }' | grep -E 'lib(asan|ubsan|lsan)' | xargs -r cp -L -t "$tools/lib/"
done
install -m 0755 "$here/in-vm.sh" "$tools/in-vm.sh"

# --- Debian testing's QEMU (the vfio-user client) for alice's unprivileged run: the cached tree of
# tests/qemu as an ext4 image, attached read-only to both VMs. Missing, the VM's test fails with the reason.
mkdir -p "$tools/qemu"
cp "$src/tests/qemu/qtest.py" "$src/tests/qemu/test-qemu-edu.py" "$tools/qemu/"
qemu_drive=()
if qemu_image=$("$src/tests/qemu/make-qemu-root.sh" --image 2>"$work/qemu-root.log"); then
        qemu_drive=(-drive "file=$qemu_image,if=none,id=qemuroot,format=raw,readonly=on"
                    -device virtio-blk-pci,drive=qemuroot)
        echo "# QEMU tree image $qemu_image ($(elapsed) s)"
else
        tail -n 1 "$work/qemu-root.log" > "$tools/qemu/unavailable"
        sed 's/^/# /' "$work/qemu-root.log"
fi

run_vm() { # bus
        local bus=$1 shell=${2:-} root=$work/root-$bus image=$work/root-$bus.img results=$work/results-$bus.txt
        local t0=$(date +%s)

        rm -rf "$root" "$image" "$results"
        mkdir -p "$root"
        tar -xf "$rootfs" -C "$root" || return 1
        mkdir -p "$root/root/debs/upgrade" "$root/usr/local/lib/vfio-broker-tests"
        cp "$work"/debs/*.deb "$root/root/debs/"
        cp "$work"/debs/upgrade/*.deb "$root/root/debs/upgrade/"
        cp -a "$tools"/. "$root/usr/local/lib/vfio-broker-tests/"
        echo "$bus" > "$root/usr/local/lib/vfio-broker-tests/bus"
        echo "$upgrade_version" > "$root/usr/local/lib/vfio-broker-tests/upgrade-version"
        install -m 0644 "$here/vfio-broker-tests.service" "$root/etc/systemd/system/"
        if [ -z "$shell" ]; then
                ln -sf /etc/systemd/system/vfio-broker-tests.service "$root/etc/systemd/system/multi-user.target.wants/"
        else
                echo root::0:0:root:/root:/bin/bash > "$root/etc/passwd.new" && grep -v '^root:' "$root/etc/passwd" >> "$root/etc/passwd.new" &&
                        mv "$root/etc/passwd.new" "$root/etc/passwd"
        fi
        ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
        # The bus under test: dbus-broker takes dbus.service's name as `systemctl enable dbus-broker` does.
        # Debian's dbus-broker package enables itself at install; for dbus-daemon undo that.
        if [ "$bus" = dbus-broker ]; then
                ln -sf /lib/systemd/system/dbus-broker.service "$root/etc/systemd/system/dbus.service"
        else
                rm -f "$root/etc/systemd/system/dbus.service" "$root/etc/systemd/user/dbus.service" \
                      "$root"/etc/systemd/*/*.wants/dbus-broker.service
        fi
        # No network, no clock to sync, nothing on the console but the kernel and the tests.
        for u in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service; do
                ln -sf /dev/null "$root/etc/systemd/system/$u"
        done
        [ -n "$shell" ] || ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
        mkfs.ext4 -q -F -L sysvm -d "$root" "$image" 2G >&2 || return 1
        rm -rf "$root"
        echo "# $bus: image ready ($(( $(date +%s) - t0 )) s)" >&2

        local qemu=(qemu-system-x86_64 -M q35,accel=tcg,kernel-irqchip=split -cpu max -m 2048 -smp 2
                    -device intel-iommu,intremap=on
                    -device edu -device edu
                    # The root file system first, so it is /dev/vda (initramfs-init.sh mounts that).
                    -drive file="$image",format=raw,if=none,id=root,cache=unsafe -device virtio-blk-pci,drive=root
                    "${qemu_drive[@]}"
                    -device virtio-rng-pci
                    -kernel "$vmlinuz" -initrd "$initrd"
                    -nic none -display none -no-reboot)
        local append="console=ttyS0 intel_iommu=on panic=-1 loglevel=4 rw systemd.show_status=0 hugepages=16"
        if [ -n "$shell" ]; then
                exec "${qemu[@]}" -serial mon:stdio -append "$append"
        fi
        timeout --foreground "$timeout" "${qemu[@]}" -serial stdio -serial file:"$results" -append "$append" \
                < /dev/null 2>&1 | tr -d '\r' | sed "s/^/[$bus] /" >&2
        echo "# $bus: VM ran $(( $(date +%s) - t0 )) s" >&2
        rm -f "$image"
        return 0
}

for bus in "${buses[@]}"; do
        case "$bus" in
        SHELL-*) run_vm "${bus#SHELL-}" shell ;;
        esac
done
# Both VMs at once: each is mostly one busy vCPU under TCG, and the host has two cores.
pids=()
for bus in "${buses[@]}"; do
        run_vm "$bus" &
        pids+=($!)
done
wait "${pids[@]}"
for bus in "${buses[@]}"; do
        done_seen=0
        while IFS= read -r line; do
                line=${line%$'\r'}
                case "$line" in
                "VMTAP: ok - "*)     tap 0 "$bus: ${line#VMTAP: ok - }" ;;
                "VMTAP: not ok - "*) tap 1 "$bus: ${line#VMTAP: not ok - }" ;;
                "VMTAP: # "*)        echo "# $bus: ${line#VMTAP: # }" ;;
                VMDONE)              done_seen=1 ;;
                esac
        done < <(cat "$work/results-$bus.txt" 2>/dev/null)
        [ "$done_seen" = 1 ]
        tap $? "$bus: the VM ran its tests to completion (no timeout, no crash)"
done
echo "# system VM tests took $(elapsed) s"
echo "1..$n"
[ "$failed" = 0 ]
