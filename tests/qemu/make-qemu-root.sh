#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Builds (once) a Debian testing tree with QEMU >= 10.1, whose vfio-user-pci client the vfio-user tests
# drive unmodified, and python3 for the qtest driver when it runs inside the test VM. Debian 12's own
# QEMU (7.2) predates vfio-user. The tree is cached machine-wide so clean-clone CI runs share it:
#
#   make-qemu-root.sh [--image]   -> prints the tree's path; --image: the path of an ext4 image of it
#                                    (for the real-kernel VM, which attaches it as a virtio disk)
#
# Cache: ${VFIO_BROKER_TEST_CACHE:-/var/cache/vfio-broker-tests}/qemu-root-<key>, where <key> hashes
# the recipe below, so a changed recipe builds a new tree (older ones are removed). Built in a
# temporary directory and renamed into place with a marker file, under a lock, so an interrupted or
# concurrent build never leaves a half tree that looks complete. If the tree is missing and Debian's
# archive cannot be reached, this fails with the reason: a test must not pass without its QEMU.
set -euo pipefail

want_image=false
[ "${1:-}" = --image ] && want_image=true

# The recipe. Everything that changes the tree is in here and in the key.
suite=testing
mirror=http://deb.debian.org/debian
packages=qemu-system-x86,python3-minimal
options=(
        --variant=apt
        --include="$packages"
        # testing's Release file can be past its Valid-Until date on a snapshot mirror.
        --aptopt='Acquire::Check-Valid-Until "false"'
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/info/*'
)
recipe_version=1   # bump to force a rebuild (e.g. to pick up a newer QEMU from testing)
key=$(printf '%s\n' "$recipe_version" "$suite" "$mirror" "${options[@]}" | sha256sum | cut -c1-16)

die() { echo "make-qemu-root: $*" >&2; exit 1; }

cache=${VFIO_BROKER_TEST_CACHE:-/var/cache/vfio-broker-tests}
mkdir -p "$cache" || die "cannot create the cache directory $cache"
cache=$(cd "$cache" && pwd)
root=$cache/qemu-root-$key
image=$cache/qemu-root-$key.ext4

# One builder at a time (CI jobs and developers share the cache); the others wait and reuse.
# (A reader without write access to the cache locks read-only: it only uses what is there.)
lock=$cache/qemu-root.lock
if [ -w "$cache" ] || [ -w "$lock" ]; then exec 9>>"$lock"; else exec 9<"$lock"; fi
flock 9

qemu_version() { chroot "$1" qemu-system-x86_64 --version 2>/dev/null | head -n 1; }

if [ ! -f "$root/.vfio-broker-complete" ]; then
        command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (scripts/install-deps.sh installs it)"
        [ "$(id -u)" -eq 0 ] || die "building the QEMU tree needs root (chroot); run as root or provide $root"
        # What an interrupted build left (we hold the lock: nobody is building). --one-file-system:
        # never follow into a mount mmdebstrap may have left behind in a killed build.
        rm -rf --one-file-system "$cache"/.qemu-root-build.*
        tmp=$(mktemp -d "$cache/.qemu-root-build.XXXXXX")
        chmod 0755 "$tmp"   # apt downloads as _apt where it can
        log=$tmp.log
        echo "make-qemu-root: building $root from Debian $suite (once; cached)" >&2
        if ! mmdebstrap "${options[@]}" "$suite" "$tmp/root" "$mirror" > "$log" 2>&1; then
                tail -n 15 "$log" >&2
                rm -rf --one-file-system "$tmp" "$log"
                die "mmdebstrap failed: cannot build a Debian $suite tree with $packages from $mirror (is the archive reachable?)"
        fi
        rm -f "$log"
        version=$(qemu_version "$tmp/root")
        [ -n "$version" ] || { rm -rf --one-file-system "$tmp"; die "the built tree has no working qemu-system-x86_64"; }
        printf '%s\n' "$version" > "$tmp/root/.vfio-broker-complete"
        # Older recipes' trees and images go; the rename is what makes this one visible.
        for old in "$cache"/qemu-root-*/.vfio-broker-complete; do
                [ -e "$old" ] || continue
                old=${old%/.vfio-broker-complete}
                [ "$old" = "$root" ] || rm -rf --one-file-system "$old" "$old.ext4"
        done
        rm -f "$image"
        mv "$tmp/root" "$root"
        rmdir "$tmp"
fi

if $want_image && [ ! -f "$image" ]; then
        # Read-only in the VM; the size leaves ext4's metadata room, the file is sparse.
        size=$(( $(du -sm "$root" | cut -f1) * 5 / 4 + 64 ))M
        rm -f "$image.tmp"
        mkfs.ext4 -q -F -L qemu-root -E root_owner=0:0 -d "$root" "$image.tmp" "$size" >&2 ||
                { rm -f "$image.tmp"; die "mkfs.ext4 -d could not make an image of $root"; }
        mv "$image.tmp" "$image"
fi

echo "make-qemu-root: $(cat "$root/.vfio-broker-complete") in $root" >&2
if $want_image; then echo "$image"; else echo "$root"; fi
