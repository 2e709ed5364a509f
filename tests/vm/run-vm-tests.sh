#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Boots Debian's kernel under QEMU (TCG) with an emulated Intel IOMMU (interrupt remapping on) and two
# edu DMA devices bound to vfio-pci, runs vfio-brokerd --backend=vfio and the tests inside, and prints
# one TAP stream on stdout (the VM's console goes to stderr).
#
#   run-vm-tests.sh BUILDDIR [SHELL]     SHELL: boot into an interactive shell instead (debugging)
set -uo pipefail

builddir=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
cache=${VM_CACHE:-$builddir/vm-cache}
root=$builddir/vm-root
timeout=${VM_TIMEOUT:-900}

bail() { echo "Bail out! $*"; exit 1; }

command -v qemu-system-x86_64 >/dev/null || bail "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
[ -x /bin/busybox ] || bail "/bin/busybox is missing (apt-get install busybox-static)"
kernel=$("$here/fetch-kernel.sh" "$cache") || bail "cannot fetch the kernel package"
kver=$(ls "$kernel/lib/modules" | head -n 1)
vmlinuz=$(ls "$kernel"/boot/vmlinuz-* | head -n 1)

# --- the initramfs -----------------------------------------------------------------------------
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,lib/modules,tests,usr/bin,var/lib/dbus}
cp /bin/busybox "$root/bin/busybox"
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci; do
        f=$(find "$kernel/lib/modules/$kver" -name "$m.ko*" | head -n 1)
        [ -n "$f" ] || bail "module $m not found"
        case "$f" in
        *.xz)  xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
        *.zst) zstd -dc "$f" > "$root/lib/modules/$m.ko" ;;
        *)     cp "$f" "$root/lib/modules/$m.ko" ;;
        esac
done

# The project as `meson install` lays it out.
DESTDIR=$root meson install -C "$builddir" --no-rebuild --quiet >/dev/null || bail "meson install failed"

install -m 0755 "$here/init.sh" "$root/init"
install -m 0755 "$here/run-in-vm.sh" "$root/tests/run.sh"
install -m 0644 "$here/../system-bus.conf.in" "$root/tests/system-bus.conf.in"
bins=(/usr/bin/dbus-daemon /usr/bin/busctl)
for t in tests/integration/test-broker tests/vm/test-dma client/mini-vmm tests/vm/fdstore-supervisor \
         tests/vm/test-restart-dma tests/vm/test-vmm-features tests/vm/test-vfio-user tests/vm/test-hotplug \
         tests/vm/test-vfio-user-restart; do
        [ -x "$builddir/$t" ] || bail "$builddir/$t was not built"
        cp "$builddir/$t" "$root/tests/"
        bins+=("$builddir/$t")
done
bins+=("$root/usr/local/sbin/vfio-brokerd" "$builddir/client/vfio-brokerctl" "$builddir/client/libvfio-broker.so.0")
cp /usr/bin/dbus-daemon /usr/bin/busctl "$root/usr/bin/"
# udev: the broker follows the host's devices through udev's rebroadcast of the kernel's uevents
# (no rules needed; systemd-udevd is udevadm under another name).
[ -x /bin/udevadm ] || bail "/bin/udevadm is missing (apt-get install udev)"
mkdir -p "$root/lib/systemd"
cp /bin/udevadm "$root/bin/udevadm"
ln -s /bin/udevadm "$root/lib/systemd/systemd-udevd"
bins+=(/bin/udevadm)

# Shared libraries (and the dynamic loader) of every binary.
for b in "${bins[@]}"; do
        ldd "$b" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }'
done | sort -u | while read -r lib; do
        cp --parents -L "$lib" "$root/" 2>/dev/null
done
[ -e "$root/lib64" ] || ln -s lib "$root/lib64" 2>/dev/null
mkdir -p "$root/lib64" && cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/" 2>/dev/null

printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
echo 0123456789abcdef0123456789abcdef > "$root/etc/machine-id"
cp "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"

# --- nested QEMU: Debian testing's (the vfio-user client), its tree on a read-only virtio disk ---
# Only when the meson test asks for it (VM_QEMU_ROOT_SCRIPT, option qemu_tests). The modules are
# loaded late (run-in-vm.sh), so every other test sees the VM exactly as without the disk.
nested_drive=()
if [ -n "${VM_QEMU_ROOT_SCRIPT:-}" ]; then
        mkdir -p "$root/tests/qemu" "$root/lib/modules/nested"
        if image=$("$VM_QEMU_ROOT_SCRIPT" --image 2>"$builddir/vm-qemu-root.log"); then
                nested_drive=(-drive "file=$image,if=none,id=qemuroot,format=raw,readonly=on"
                              -device virtio-blk-pci,drive=qemuroot)
                cp "$here/../qemu/qtest.py" "$here/../qemu/test-qemu-edu.py" "$here/../../bench/qemu-startup.py" \
                   "$root/tests/qemu/"
                # In load order; crc32c for ext4's and jbd2's checksums (the kernel cannot modprobe here).
                for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
                         crc16 mbcache crc32c_generic jbd2 ext4; do
                        f=$(find "$kernel/lib/modules/$kver" -name "$m.ko*" | head -n 1)
                        [ -n "$f" ] || bail "module $m not found"
                        case "$f" in
                        *.xz)  xz -dc "$f" > "$root/lib/modules/nested/$m.ko" ;;
                        *.zst) zstd -dc "$f" > "$root/lib/modules/nested/$m.ko" ;;
                        *)     cp "$f" "$root/lib/modules/nested/$m.ko" ;;
                        esac
                        echo "$m" >> "$root/lib/modules/nested/order"
                done
        else
                # No tree (the archive unreachable and nothing cached): the VM reports it as a failure.
                tail -n 1 "$builddir/vm-qemu-root.log" > "$root/tests/qemu/unavailable"
        fi
        sed 's/^/# /' "$builddir/vm-qemu-root.log" >&2
fi

initrd=$builddir/vm-initrd.cpio
( cd "$root" && find . | cpio -o -H newc --quiet ) > "$initrd" || bail "cpio failed"

# --- boot --------------------------------------------------------------------------------------
qemu=(qemu-system-x86_64 -M q35,accel=tcg,kernel-irqchip=split -cpu max -m 2048 -smp 2
      -device intel-iommu,intremap=on
      -device edu -device edu
      -device pcie-root-port,id=rp1,chassis=1,slot=1 -device edu,bus=rp1
      -device pcie-root-port,id=rp2,chassis=2,slot=2
      -device edu,bus=rp2,addr=0.0,multifunction=on -device edu,bus=rp2,addr=0.1,multifunction=on
      -device virtio-rng-pci
      "${nested_drive[@]}"
      -kernel "$vmlinuz" -initrd "$initrd"
      -nic none -nographic -no-reboot)
append="console=ttyS0 intel_iommu=on panic=-1 loglevel=4 hugepages=16"

if [ "${2:-}" = SHELL ]; then
        sed -i 's|^sh /tests/run.sh|sh|' "$root/init"
        ( cd "$root" && find . | cpio -o -H newc --quiet ) > "$initrd"
        exec "${qemu[@]}" -append "$append"
fi

start=$(date +%s.%N)
timeout --foreground "$timeout" "${qemu[@]}" -append "$append" < /dev/null 2>&1 | tr -d '\r' |
awk -v start="$start" '
        function elapsed() { "date +%s.%N" | getline now; close("date +%s.%N"); return now - start }
        /VMTAP: / {
                line = substr($0, index($0, "VMTAP: ") + 7)
                if (line ~ /^#/) { print line; next }
                n++
                if (line ~ /^not ok/) { failed++; sub(/^not ok - /, "", line); print "not ok " n " - " line }
                else { sub(/^ok - /, "", line); print "ok " n " - " line }
                fflush(); next
        }
        /VMBENCH: / { print "# " substr($0, index($0, "VMBENCH: ") + 9); fflush(); next }
        /VMDONE/ { done = 1 }
        /VMLOG: kernel/ { sub(/.*booted in /, ""); print "# VM kernel up after " $0 " of guest time" }
        { print > "/dev/stderr" }
        END {
                if (!done) { n++; failed++; print "not ok " n " - the VM ran its tests to completion (timeout or crash)" }
                printf "# VM finished %.1f s after QEMU started\n", elapsed()
                print "1.." n
                exit failed ? 1 : 0
        }'
