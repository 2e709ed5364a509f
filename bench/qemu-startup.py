#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Benchmark (figures, not a test): how long an unmodified QEMU takes from its start until a guest can
use its PCI device, measured by the qtest guest of tests/qemu (qtest.py), in phases:

  qtest      QEMU answers its first qtest request: machine built, devices realized (for
             vfio-user-pci: connected, version negotiated, regions and IRQs read from the server)
  config     the device is found on bus 0 and BAR0 is sized and programmed through config space
  usable     BAR0 answers (edu identity register): the device is usable
  dma        one 2 KiB DMA guest RAM -> device -> guest RAM and the read-back (not in "usable")

  qemu-startup.py (--root-script make-qemu-root.sh | --root DIR | --inside) [--runs N]
                  [--device DEV] [--ram-mib N]

--device defaults to QEMU's own edu; at integration, the broker's device is
'{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/tmp/...sock"}}' (the broker serving it).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "qemu"))
import qtest  # noqa: E402


def one_run(root, tmp, device, ram_mib, user):
    t0 = time.monotonic()
    qt = qtest.Qtest(qtest.qemu_argv([device], ram_mib=ram_mib), root=root, tmpdir=tmp, user=user,
                     stderr=subprocess.DEVNULL)
    with qt:
        t_qtest = qt.ready
        pci = qtest.Pci(qt)
        dev, fn = pci.find(qtest.EDU_VENDOR, qtest.EDU_DEVICE)
        pci.map_bar(dev, fn, 0, qtest.DEFAULT_BAR_BASE)
        t_config = time.monotonic()
        edu = qtest.Edu(qt, qtest.DEFAULT_BAR_BASE)
        if edu.identity() != 0x010000ED:
            raise qtest.QtestError("BAR0 does not answer like an edu")
        t_usable = time.monotonic()
        data = qtest.pattern(2048, 7)
        qt.write(0x100000, data)
        edu.to_device(0x100000, len(data))
        edu.to_ram(0x200000, len(data))
        if qt.read(0x200000, len(data)) != data:
            raise qtest.QtestError("the DMA round trip corrupted data")
        t_dma = time.monotonic()
        rc = qt.quit()
        if rc != 0:
            raise qtest.QtestError("QEMU exited with status %s" % rc)
    return dict(qtest=t_qtest - t0, config=t_config - t0, usable=t_usable - t0, dma=t_dma - t_usable)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--root-script")
    where.add_argument("--root")
    where.add_argument("--inside", action="store_true")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--device", default="edu")
    ap.add_argument("--ram-mib", type=int, default=128)
    ap.add_argument("--user", default="65534:65534")
    args = ap.parse_args()

    root = args.root
    if args.root_script:
        r = subprocess.run([args.root_script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit("qemu-startup: no QEMU tree: %s" % r.stderr.strip())
        root = r.stdout.strip()
    tmp = tempfile.mkdtemp(prefix="vfio-broker-bench-")
    os.chmod(tmp, 0o755)

    one_run(root, tmp, args.device, args.ram_mib, args.user)   # warm the page cache
    runs = [one_run(root, tmp, args.device, args.ram_mib, args.user) for _ in range(args.runs)]
    os.rmdir(tmp)

    print("QEMU start -> device usable, -device %s, %d MiB memfd RAM, %d runs (seconds)" %
          (args.device, args.ram_mib, args.runs))
    print("%-8s %8s %8s %8s" % ("phase", "min", "median", "max"))
    for phase in ("qtest", "config", "usable", "dma"):
        v = sorted(r[phase] for r in runs)   # (python3-minimal in the VM has no statistics module)
        median = (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2
        print("%-8s %8.3f %8.3f %8.3f" % (phase, v[0], median, v[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
