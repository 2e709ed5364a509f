#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Builds (or finds in the cache) a Debian 12 root file system for the system VM: systemd as PID 1, both
# system buses (dbus-daemon and dbus-broker), polkitd and every run-time dependency of the vfio-broker
# packages, so that the VM, which has no network, can `apt install` the .debs offline.
#
#   make-rootfs.sh CACHEDIR   -> prints the path of the root file system tarball
#
# The tarball is keyed by the package list (and this script), so a change to either builds a new one.
# Only Debian's archive is used (deb.debian.org, as in the host's own sources).
set -euo pipefail
cache=$1

packages=(
        systemd systemd-sysv udev dbus dbus-daemon dbus-broker polkitd kmod procps util-linux
        # what the vfio-broker packages depend on
        libsystemd0 libjson-c5 libglib2.0-0
)
mirror=${SYSTEM_VM_MIRROR:-http://deb.debian.org/debian}
options=(--variant=minbase --format=tar
         --customize-hook='echo system-vm > "$1/etc/hostname"'
         --customize-hook='rm -f "$1"/etc/machine-id && touch "$1/etc/machine-id"')
# The key: what goes into the tree, not how this script is worded.
key=$(printf '%s\n' bookworm "$mirror" "${packages[@]}" "${options[@]}" | sha256sum | cut -c1-16)
tarball=$cache/rootfs-bookworm-$key.tar

mkdir -p "$cache"
if [ -f "$tarball" ]; then
        echo "$tarball"
        exit 0
fi
command -v mmdebstrap >/dev/null || { echo "make-rootfs: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }

include=$(IFS=,; echo "${packages[*]}")
tmp=$cache/.building-$$.tar
trap 'rm -f "$tmp"' EXIT
# root: the tree keeps real owners, so mkfs.ext4 -d copies them as they are.
mmdebstrap --quiet "${options[@]}" --include="$include" bookworm "$tmp" "$mirror" >&2
mv "$tmp" "$tarball"
trap - EXIT
# Older keys of this cache are stale now.
find "$cache" -maxdepth 1 -name 'rootfs-bookworm-*.tar' ! -name "${tarball##*/}" -delete
echo "$tarball"
