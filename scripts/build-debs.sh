#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Builds the Debian packages from this working tree (committed or not) without writing outside OUTDIR:
# dpkg-buildpackage puts its results next to the source, so the tree is copied to OUTDIR/src first.
#
#   scripts/build-debs.sh OUTDIR      -> OUTDIR/*.deb (and the .buildinfo/.changes)
#
# DEB_BUILD_OPTIONS passes through (nocheck skips the build-time tests; the system VM test uses it, having
# run them itself).
set -euo pipefail
out=$1
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

rm -rf "$out/src"
mkdir -p "$out/src/vfio-broker"
# Files git knows or would add: no build directories, no caches.
( cd "$src" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - ) | tar -xf - -C "$out/src/vfio-broker"

( cd "$out/src/vfio-broker" && dpkg-buildpackage -us -uc -b ) > "$out/dpkg-buildpackage.log" 2>&1 || {
        tail -n 40 "$out/dpkg-buildpackage.log" >&2
        echo "build-debs: dpkg-buildpackage failed; the whole log is $out/dpkg-buildpackage.log" >&2
        exit 1
}
rm -f "$out"/*.deb "$out"/*.buildinfo "$out"/*.changes
mv "$out"/src/*.deb "$out"/src/*.buildinfo "$out"/src/*.changes "$out/"
rm -rf "$out/src"
ls "$out"/*.deb
