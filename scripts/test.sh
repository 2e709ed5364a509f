#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Builds vfio-broker with -Werror under AddressSanitizer + UBSan (and twice more, also with -Werror, which
# only compile: a release build, and one with Debian's packaging flags) and runs every test suite: unit
# (cmocka), integration (real dbus-daemon and polkitd), docs, and the real-kernel VFIO tests in a
# QEMU VM. Ends with "tests: N passed, M failed" from meson's own counts.
set -uo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh || exit 1

builddir=${BUILDDIR:-build-test}
if [ ! -f "$builddir/build.ninja" ]; then
        meson setup "$builddir" \
                -Dwerror=true \
                -Db_sanitize=address,undefined \
                -Db_lundef=false \
                -Dtests=enabled \
                -Dvm_tests=enabled || exit 1
fi
meson compile -C "$builddir" || exit 1

# What distributions build: optimized, without assert(), where gcc's flow analysis warns differently.
relbuilddir=${RELBUILDDIR:-build-release}
if [ ! -f "$relbuilddir/build.ninja" ]; then
        meson setup "$relbuilddir" -Dbuildtype=release -Dwerror=true -Dtests=enabled -Dvm_tests=disabled || exit 1
fi
meson compile -C "$relbuilddir" || exit 1

# What Debian's packaging builds (debhelper: buildtype plain, the flags from dpkg-buildflags): with
# _FORTIFY_SOURCE glibc marks asprintf, read, write... warn_unused_result, which no other build shows.
debbuilddir=${DEBBUILDDIR:-build-debian}
if [ ! -f "$debbuilddir/build.ninja" ]; then
        CFLAGS="$(dpkg-buildflags --get CFLAGS)" CPPFLAGS="$(dpkg-buildflags --get CPPFLAGS)" \
                LDFLAGS="$(dpkg-buildflags --get LDFLAGS)" \
                meson setup "$debbuilddir" -Dbuildtype=plain -Dwerror=true -Dtests=enabled -Dvm_tests=disabled || exit 1
fi
meson compile -C "$debbuilddir" || exit 1

log=$(mktemp)
meson test -C "$builddir" --print-errorlogs --num-processes 2 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

count() { awk -v k="$1" -F: '$1 == k { gsub(/ /, "", $2); print $2 }' "$log" | tail -n 1; }
ok=$(count "Ok"); xfail=$(count "Expected Fail"); fail=$(count "Fail"); xpass=$(count "Unexpected Pass")
timeout=$(count "Timeout"); skipped=$(count "Skipped")
passed=$(( ${ok:-0} + ${xfail:-0} ))
failed=$(( ${fail:-0} + ${xpass:-0} + ${timeout:-0} ))
rm -f "$log"

# A run that executed nothing, or whose summary could not be read, is not a pass.
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
        failed=1
        status=1
fi
echo "tests: $passed passed, $failed failed, ${skipped:-0} skipped"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
