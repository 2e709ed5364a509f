#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Installs the Debian 12 packages vfio-broker needs to build, run and test. Idempotent: it only calls
# apt-get when something is missing.
set -euo pipefail

packages=(
        # build (dpkg-dev: dpkg-buildflags, for the build with Debian's packaging flags)
        gcc meson ninja-build pkg-config libsystemd-dev libjson-c-dev zlib1g-dev libglib2.0-dev libglib2.0-bin dpkg-dev
        # tests: cmocka, a real bus and polkitd, busctl/gdbus, sanitizers and fuzzers, manual lint
        libcmocka-dev dbus-daemon dbus-bin polkitd systemd python3 python3-dbusmock clang libclang-rt-14-dev mandoc
        util-linux
        # tests: clients generated from the XML (gdbus-codegen; Python's gi with Gio's typelib)
        libglib2.0-dev-bin python3-gi gir1.2-glib-2.0
        # the real-kernel VM tests: QEMU (TCG), busybox for the initramfs, cpio, kmod tools
        qemu-system-x86 busybox-static cpio xz-utils kmod
        # ... and udev in it (the broker follows the host's devices through udev)
        udev
        # Debian testing's QEMU (vfio-user client) for the vfio-user tests: a cached tree built by mmdebstrap
        mmdebstrap e2fsprogs
        # the Debian packages and the system VM: dpkg-buildpackage, lintian, a bookworm root file system
        # (mmdebstrap) made into an ext4 image (mkfs.ext4 -d)
        debhelper dpkg-dev fakeroot lintian
)

missing=()
for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Installing: ${missing[*]}"
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
