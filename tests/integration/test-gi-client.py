#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A Python client from the shipped XML alone, through gi (python3-gi): Gio.DBusProxy objects built with
the interface info of dbus-interfaces/*.xml, so that GLib checks every reply and property against the
XML. Create a container, attach a group, Map a memfd passed in a Gio.UnixFDList, read properties, get
broker errors by their remote names, Close. Against the daemon on the test bus (TAP output)."""

import os
import sys

import gi

gi.require_version("Gio", "2.0")
gi.require_version("GLib", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

BUS = "org.vfiobroker.Broker1"
ROOT = "/org/vfiobroker/Broker1"
MiB = 1 << 20
IOVA = 0x10000000

n_tests = 0
failures = 0


def check(ok, what, detail=None):
    global n_tests, failures
    n_tests += 1
    if not ok:
        failures += 1
    print("%s %d - %s" % ("ok" if ok else "not ok", n_tests, what))
    if detail:
        print("#   %s" % detail)


def interface_info(xml_dir, short):
    name = BUS + "." + short
    with open(os.path.join(xml_dir, name + ".xml")) as f:
        node = Gio.DBusNodeInfo.new_for_xml(f.read())
    return node.lookup_interface(name)


def proxy(bus, info, path):
    return Gio.DBusProxy.new_sync(bus, Gio.DBusProxyFlags.NONE, info, BUS, path, info.name, None)


def remote_error(fn):
    """Runs fn, returns the D-Bus error name it failed with (None if it did not fail) and the message."""
    try:
        fn()
    except GLib.Error as e:
        name = Gio.DBusError.get_remote_error(e)
        Gio.DBusError.strip_remote_error(e)
        return name, e.message
    return None, None


def memfd(size):
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def main():
    xml_dir = sys.argv[1]
    manager_info = interface_info(xml_dir, "Manager")
    group_info = interface_info(xml_dir, "Group")
    container_info = interface_info(xml_dir, "Container")
    # Gio.bus_get_sync honours DBUS_SYSTEM_BUS_ADDRESS, as the broker's clients do.
    bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)

    manager = proxy(bus, manager_info, ROOT)
    check(manager.get_cached_property("Backend").unpack() == "sim", "Manager.Backend reads sim")

    (path,) = manager.call_sync("CreateContainer", GLib.Variant("(a{sv})", ({"Label": GLib.Variant("s", "gi")},)),
                                Gio.DBusCallFlags.NONE, -1, None).unpack()
    check(path.startswith(ROOT + "/container/"), "CreateContainer returns " + path)
    c = proxy(bus, container_info, path)

    c.call_sync("AttachGroup", GLib.Variant("(u)", (1,)), Gio.DBusCallFlags.NONE, -1, None)
    check(True, "AttachGroup(1)")

    ram = memfd(2 * MiB)
    fds = Gio.UnixFDList.new_from_array([ram])  # takes ram
    c.call_with_unix_fd_list_sync("Map", GLib.Variant("(htttu)", (0, 0, MiB, IOVA, 3)), Gio.DBusCallFlags.NONE, -1,
                                  fds, None)
    check(True, "Map a memfd passed in a Gio.UnixFDList")

    group = proxy(bus, group_info, ROOT + "/group/1")
    devices = group.get_cached_property("Devices").unpack()
    ret, out_fds = c.call_with_unix_fd_list_sync("OpenDevice", GLib.Variant("(s)", (devices[0],)),
                                                 Gio.DBusCallFlags.NONE, -1, None, None)
    device_fd = out_fds.get(ret.unpack()[0])
    check(os.fstat(device_fd) is not None, "OpenDevice(%s) returns an fd in its Gio.UnixFDList" % devices[0])
    os.close(device_fd)

    fresh = proxy(bus, container_info, path)  # a new proxy reads every property afresh
    props = {name: fresh.get_cached_property(name).unpack() for name in fresh.get_cached_property_names()}
    check(props["Mappings"] == 1 and props["MappedBytes"] == MiB, "Mappings and MappedBytes count the mapping",
          "Mappings %s MappedBytes %s" % (props["Mappings"], props["MappedBytes"]))
    check(props["Label"] == "gi" and props["UID"] == os.getuid() and props["Groups"] == [1],
          "Label, UID and Groups")
    check(set(props) == {p.name for p in container_info.properties}, "every property of the XML, and no other")

    fds = Gio.UnixFDList.new_from_array([memfd(2 * MiB)])
    name, message = remote_error(lambda: c.call_with_unix_fd_list_sync(
        "Map", GLib.Variant("(htttu)", (0, 0, MiB, IOVA, 3)), Gio.DBusCallFlags.NONE, -1, fds, None))
    check(name == "org.vfiobroker.Broker1.Error.Overlap" and "overlaps" in (message or ""),
          "a second Map at the same IOVA fails with Overlap and says why", "%s: %s" % (name, message))

    name, message = remote_error(lambda: c.call_sync("AttachGroup", GLib.Variant("(u)", (4242,)),
                                                     Gio.DBusCallFlags.NONE, -1, None))
    check(name == "org.vfiobroker.Broker1.Error.NoSuchGroup", "AttachGroup(4242) fails with NoSuchGroup",
          "%s: %s" % (name, message))

    name, message = remote_error(lambda: c.call_sync("Unmap", GLib.Variant("(tt)", (IOVA + 4096, 4096)),
                                                     Gio.DBusCallFlags.NONE, -1, None))
    check(name == "org.vfiobroker.Broker1.Error.WouldSplit", "an Unmap that cuts the mapping fails with WouldSplit",
          "%s: %s" % (name, message))

    c.call_sync("Close", None, Gio.DBusCallFlags.NONE, -1, None)
    check(True, "Close")
    name, message = remote_error(lambda: c.call_sync("AttachGroup", GLib.Variant("(u)", (1,)),
                                                     Gio.DBusCallFlags.NONE, -1, None))
    check(name is not None and not name.startswith(BUS), "the closed container is gone", "%s: %s" % (name, message))

    print("1..%d" % n_tests)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GLib.Error as e:
        print("Bail out! %s" % e.message)
        sys.exit(1)
