#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The live daemon's introspection must match dbus-interfaces/*.xml member for member: methods with
argument names, types and directions; properties with type, access and change behaviour; signals.
Annotations for code generators (org.gtk.GDBus.*) exist only in the XML and are checked there.
A container object is held open by the mini VMM (client/examples/mini-vmm --hold)."""

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

BUS = "org.vfiobroker.Broker1"
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"
UNIX_FD = "org.gtk.GDBus.C.UnixFD"


def describe(iface):
    members = {}
    for m in iface.findall("method"):
        members["method " + m.get("name")] = [(a.get("name"), a.get("type"), a.get("direction", "in"))
                                              for a in m.findall("arg")]
    for s in iface.findall("signal"):
        members["signal " + s.get("name")] = [(a.get("name"), a.get("type")) for a in s.findall("arg")]
    for p in iface.findall("property"):
        emits = "true"  # the D-Bus default when the annotation is absent
        for a in p.findall("annotation"):
            if a.get("name") == EMITS:
                emits = a.get("value")
        members["property " + p.get("name")] = (p.get("type"), p.get("access"), emits)
    return members


def interface(xml_text, name):
    for i in ET.fromstring(xml_text).findall("interface"):
        if i.get("name") == name:
            return i
    return None


def live_xml(path):
    return subprocess.check_output(["busctl", "--system", "--xml-interface", "introspect", BUS, path], text=True)


def main():
    src, mini_vmm = sys.argv[1], sys.argv[2]
    failures = 0
    tmp = tempfile.mkdtemp()
    fifo = os.path.join(tmp, "hold")
    os.mkfifo(fifo)
    vmm = subprocess.Popen([mini_vmm, "--label=introspection", "--hold=" + fifo], stdout=subprocess.PIPE, text=True)
    container = None
    for line in vmm.stdout:
        if line.startswith("created container "):
            container = line.split()[2]
        if line.startswith("holding"):
            break
    objects = {
        "Manager": "/org/vfiobroker/Broker1",
        "Group": "/org/vfiobroker/Broker1/group/1",
        "Container": container,
    }
    try:
        for short, path in objects.items():
            name = BUS + "." + short
            with open(os.path.join(src, "dbus-interfaces", name + ".xml")) as f:
                want = describe(interface(f.read(), name))
            live = interface(live_xml(path), name)
            if live is None:
                print("not ok - %s is not implemented at %s" % (name, path))
                failures += 1
                continue
            got = describe(live)
            if want == got:
                print("ok - %s matches dbus-interfaces/%s.xml (%d members)" % (name, name, len(want)))
            else:
                failures += 1
                print("not ok - %s differs from its XML" % name)
                for k in sorted(set(want) | set(got)):
                    if want.get(k) != got.get(k):
                        print("#   %s: xml %s, live %s" % (k, want.get(k), got.get(k)))
        # What only the XML can say: GDBus code generators give a method fds (a GUnixFDList) only when
        # it carries org.gtk.GDBus.C.UnixFD, unless run with --glib-min-required 2.64; sd-bus
        # introspection has no such annotations, so the live side is not asked.
        missing = []
        for short in objects:
            name = BUS + "." + short
            with open(os.path.join(src, "dbus-interfaces", name + ".xml")) as f:
                iface = interface(f.read(), name)
            for m in iface.findall("method"):
                takes_fds = any("h" in (a.get("type") or "") for a in m.findall("arg"))
                annotated = any(a.get("name") == UNIX_FD and a.get("value") not in (None, "", "false")
                                for a in m.findall("annotation"))
                if takes_fds != annotated:
                    missing.append("%s.%s" % (short, m.get("name")))
        if missing:
            failures += 1
            print("not ok - %s annotated only on the methods that pass fds; wrong: %s" % (UNIX_FD, ", ".join(missing)))
        else:
            print("ok - %s annotated on every method that passes fds" % UNIX_FD)
        root = ET.fromstring(live_xml("/org/vfiobroker/Broker1"))
        if interface(ET.tostring(root, encoding="unicode"), "org.freedesktop.DBus.ObjectManager") is None:
            print("not ok - the root object implements org.freedesktop.DBus.ObjectManager")
            failures += 1
        else:
            print("ok - the root object implements org.freedesktop.DBus.ObjectManager")
    finally:
        with open(fifo, "w") as f:
            f.write("go\n")
        vmm.wait(timeout=30)
    print("1..5")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
