#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Fetches Debian's linux-image-amd64 (not installed: unpacked into a cache) for the VFIO test VM.
#   fetch-kernel.sh CACHEDIR   -> prints the unpacked tree's path (CACHEDIR/kernel)
set -euo pipefail
cache=$1
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
if [ -f "$cache/kernel/.complete" ]; then
        echo "$cache/kernel"
        exit 0
fi

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$pkg" ]; then
        apt-get update -q >&2
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
fi
[ -n "$pkg" ] || { echo "fetch-kernel: cannot resolve linux-image-amd64" >&2; exit 1; }

rm -rf "$cache/deb" "$cache/kernel"
mkdir -p "$cache/deb"
# apt's sandbox user cannot write into a root-owned 0700 dir; download as the caller, quietly.
( cd "$cache/deb" && { apt-get download -q "$pkg" >&2 2>/dev/null || { apt-get update -q >&2 && apt-get download -q "$pkg" >&2; }; } )
dpkg -x "$cache"/deb/*.deb "$cache/kernel"
rm -rf "$cache/deb"
touch "$cache/kernel/.complete"
echo "$cache/kernel"
