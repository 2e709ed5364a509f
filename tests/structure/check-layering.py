#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon's layers call only downwards: faces -> logic -> backend (-> the shared utilities).

Every file of daemon/ belongs to one layer, by its name; a file may include the project's headers of its
own layer and of the layers below, never of one above (the logic including a *-dbus.h or the state
store, the backend including the logic). A file that no rule names fails the test too, so a new file is
placed on purpose. Also: no daemon file over 600 lines without a reason written near its top
("longer than 600 lines: ...").

Prints TAP; exits non-zero on any violation."""

import os
import re
import sys

UTIL, BACKEND, LOGIC, FACE = range(4)
LAYER_NAMES = ["utility", "backend", "logic", "face"]

# First match wins.
RULES = [
    (r"^main\.c$", FACE),
    (r"^(bus|bus-error|caller|polkit|peer|peer-relay|peer-frame|owner-watch|fdstore|state|state-.*|.*-dbus|vfio-user.*)\.[ch]$", FACE),
    # The host's uevents (udev) are an input like a D-Bus call: device-monitor.c calls the logic.
    (r"^device-monitor\.[ch]$", FACE),
    (r"^backend.*\.[ch]$", BACKEND),
    # The configuration describes the backends (the sim's topology, the IOMMU's ranges) besides the
    # limits: read below the logic, beside the backends.
    (r"^config\.[ch]$", BACKEND),
    (r"^(broker|container|container-.*|group|quota|memory)\.[ch]$", LOGIC),
    (r"^(error|log|mapping-table|json-strict|event-util)\.[ch]$", UTIL),
    (r"^(broker-wire|format-util|macro|message-ids)\.h$", UTIL),
    (r"^config-build\.h$", UTIL),
]

MAX_LINES = 600


def layer_of(name):
    for pattern, layer in RULES:
        if re.match(pattern, name):
            return layer
    return None


def main():
    root = sys.argv[1]
    daemon = os.path.join(root, "daemon")
    common = os.path.join(root, "common")
    failures = []
    n = 0

    files = sorted(f for f in os.listdir(daemon) if f.endswith((".c", ".h")))
    for f in files:
        n += 1
        layer = layer_of(f)
        if layer is None:
            failures.append(f"{f}: no layer rule names this file (add it to tests/structure/check-layering.py)")
            continue
        text = open(os.path.join(daemon, f), encoding="utf-8").read()
        for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, re.M):
            target = layer_of(os.path.basename(inc))
            if target is None:
                if os.path.exists(os.path.join(daemon, inc)) or os.path.exists(os.path.join(common, inc)):
                    failures.append(f"{f}: includes {inc}, which no layer rule names")
                continue
            if target > layer:
                failures.append(f"{f} ({LAYER_NAMES[layer]}) includes {inc} ({LAYER_NAMES[target]}): "
                                "a lower layer must not call a higher one")
        lines = text.count("\n")
        if lines > MAX_LINES and not re.search(r"longer than 600 lines:", "\n".join(text.split("\n")[:30]), re.I):
            failures.append(f"{f}: {lines} lines and no reason near its top ('Longer than 600 lines: why')")

    for f in sorted(os.listdir(common)):
        if f.endswith((".c", ".h")):
            n += 1
            text = open(os.path.join(common, f), encoding="utf-8").read()
            for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, re.M):
                if not os.path.exists(os.path.join(common, inc)):
                    failures.append(f"common/{f}: includes {inc}, outside common/")

    print("1..2")
    print(f"{'ok' if not failures else 'not ok'} 1 - {n} files, every include goes to the same layer or below")
    for msg in failures:
        print(f"#   {msg}")
    # The test must be able to fail: a planted violation is caught.
    planted = layer_of("container.c") < layer_of("container-dbus.h") and layer_of("backend-sim.c") < layer_of("container.h")
    print(f"{'ok' if planted else 'not ok'} 2 - the rules rank logic below faces and the backend below logic")
    return 0 if not failures and planted else 1


if __name__ == "__main__":
    sys.exit(main())
