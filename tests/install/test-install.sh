#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `meson install` lays out every file SPEC names, and a VMM author can build against
# `pkg-config vfio-broker` (and vfio-broker-glib) from the installed tree.
set -u
builddir=$1
srcdir=$2
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
n=0
failed=0
check() {
        local what=$1
        shift
        n=$((n + 1))
        if "$@" > "$dest/out" 2>&1; then
                echo "ok $n - $what"
        else
                echo "not ok $n - $what"
                sed 's/^/#   /' "$dest/out"
                failed=$((failed + 1))
        fi
}

DESTDIR=$dest meson install -C "$builddir" --no-rebuild --quiet > "$dest/install.log" 2>&1
check "meson install succeeds" true
for f in sbin/vfio-brokerd bin/vfio-brokerctl include/vfio-broker/vfio-broker.h \
         include/vfio-broker/vfio-broker-glib.h share/dbus-1/system.d/org.vfiobroker.Broker1.conf \
         share/dbus-1/system-services/org.vfiobroker.Broker1.service \
         share/dbus-1/interfaces/org.vfiobroker.Broker1.Container.xml \
         share/polkit-1/actions/org.vfiobroker.broker1.policy share/man/man8/vfio-brokerd.8 \
         share/man/man5/org.vfiobroker.Broker1.5 share/man/man3/libvfio-broker.3 \
         share/man/man1/vfio-brokerctl.1 share/bash-completion/completions/vfio-brokerctl; do
        check "installs $f" test -e "$dest/usr/local/$f"
done
check "installs vfio-brokerd.service" bash -c "find '$dest' -name vfio-brokerd.service | grep -q ."

# The .pc files name prefix=/usr/local; point them at the staging tree (a sysroot would move glib's
# paths too).
mkdir -p "$dest/pc"
for pc in $(find "$dest" -name 'vfio-broker*.pc'); do
        sed "s|^prefix=.*|prefix=$dest/usr/local|" "$pc" > "$dest/pc/$(basename "$pc")"
done
export PKG_CONFIG_PATH=$dest/pc
check "pkg-config finds vfio-broker" pkg-config --exists vfio-broker
lib=$(dirname "$(find "$dest" -name 'libvfio-broker.so.0' | head -n 1)")
check "the library's SONAME is libvfio-broker.so.0" bash -c "objdump -p '$lib/libvfio-broker.so.0' | grep -q 'SONAME *libvfio-broker.so.0'"
check "only vfio_broker_* symbols are exported" \
        bash -c "! nm -D --defined-only '$lib/libvfio-broker.so.0' | awk '{ print \$3 }' | grep -v -e '^vfio_broker_' -e '^LIBVFIO_BROKER_0\$' | grep ."
check "a VMM builds against pkg-config vfio-broker (the mini VMM example)" \
        bash -c "cc -o '$dest/mini-vmm' '$srcdir/client/examples/mini-vmm.c' \$(pkg-config --cflags --libs vfio-broker) &&
                 ASAN_OPTIONS=verify_asan_link_order=0 LD_LIBRARY_PATH='$lib' '$dest/mini-vmm' --help 2>&1 | grep -q Usage"
check "a GLib program builds against pkg-config vfio-broker-glib" \
        bash -c "printf '#include <vfio-broker/vfio-broker-glib.h>\nint main(void) { return vfio_broker_glib_source_new(NULL) != NULL; }\n' > '$dest/g.c' &&
                 cc -o '$dest/g' '$dest/g.c' \$(pkg-config --cflags --libs vfio-broker-glib)"

echo "1..$n"
[ $failed -eq 0 ]
