#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""An unmodified QEMU (Debian testing's 11.1) uses a brokered device over vfio-user, end to end, on
the sim backend (every sim device is an edu-compatible DMA engine whose DMA goes through the
container's mappings). Runs under tests/integration/harness.py (private bus, vfio-brokerd on sim, real
polkitd whose rules let "nobody" attach the group of 0000:00:01.0).

  1. An unprivileged user runs `vfio-brokerctl run --device 0000:00:01.0 --socket PATH -- qemu ...`:
     no root, no /dev/vfio, no memlock. QEMU's guest RAM becomes the container's mapping, the balloon
     is inhibited, the device DMAs a pattern RAM -> device -> RAM, a DMA from outside guest RAM moves
     nothing; QEMU's exit ends the run with QEMU's status and leaves no container behind.
  2. The device stays served across clients: `run` holds the container for a stand-in VMM (sleep),
     QEMU #1 connects and is killed with SIGKILL (its mappings go, the device stays served), QEMU #2
     connects and works, and a QEMU of another uid is refused.
  3. An IOVA QEMU unmaps while it runs: the qtest guest turns on decoding of an ivshmem-plain's RAM
     BAR (a memfd), QEMU sends DMA_MAP for it and the device DMAs there both ways; the guest turns
     decoding off, QEMU sends DMA_UNMAP, the container's mapping goes and a DMA from or to that IOVA
     faults and moves nothing.
  4. The daemon restarts under a running QEMU (SIGTERM without a stop job, as a package upgrade or
     Debian 12's `systemctl restart`, then SIGKILL): the same QEMU, on the same connection, DMAs again
     through the device it set up before, its guest RAM mapped once; nothing of the session stays in
     the fd store once QEMU is gone.

  test-qemu-broker.py --root-script make-qemu-root.sh --ctl vfio-brokerctl
TAP on stdout."""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qtest  # noqa: E402

DEVICE = "0000:00:01.0"
NOBODY = 65534
RAM_MIB = 128
SRC, DST = 0x100000, 0x200000
OUTSIDE = 0x0C000000
COUNT = 2048
# Where the guest decodes the ivshmem's BAR2 in step 3: above guest RAM and away from OUTSIDE, below
# the edu's 28-bit DMA mask.
SHM = 0x0D000000

n = 0
failed = 0


def tap(ok, name):
    global n, failed
    n += 1
    if not ok:
        failed += 1
    print("%s %d - %s" % ("ok" if ok else "not ok", n, name), flush=True)
    return ok


def in_tree(root, tmpdir, argv):
    """argv from the testing tree, for any uid: a user namespace of the caller's (no root needed), a
    private mount namespace with tmpdir on the tree's /tmp, then chroot; every step execs, so signals
    reach QEMU itself. The uid QEMU has on the socket (SO_PEERCRED) is the caller's real one."""
    script = 'root=$1 tmp=$2; shift 2; mount --bind "$tmp" "$root/tmp" && exec chroot "$root" "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", root, tmpdir] + argv


def as_user(uid):
    return dict(user=uid, group=uid, extra_groups=[]) if uid != os.getuid() else {}


def ctl_json(ctl, *args):
    out = subprocess.run([ctl, "--json"] + list(args), check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def containers(ctl):
    doc = ctl_json(ctl, "list")
    return doc["containers"] if isinstance(doc, dict) else doc


def wait_for(cond, timeout=20.0):
    return qtest.wait_for(cond, timeout)


def dma_round_trip(qt, seed):
    edu, where = qtest.setup_edu(qt)
    data = qtest.pattern(COUNT, seed)
    qt.write(SRC, data)
    qt.write(DST, b"\0" * COUNT)
    edu.to_device(SRC, COUNT)
    edu.to_ram(DST, COUNT)
    return edu, qt.read(DST, COUNT) == data


def qemu_argv(sock):
    return qtest.qemu_argv([qtest.vfio_user_device(sock)], ram_mib=RAM_MIB)


def qemu_unmaps(ctl, root, tmp, sock):
    """3. QEMU's own DMA_UNMAP at run time makes the IOVA fault. Guest RAM stays mapped as long as
    QEMU runs, so the memory that comes and goes is an ivshmem-plain's BAR2 (a shareable memfd):
    QEMU's vfio listener maps it with its fd while the guest decodes the BAR, and unmaps it when the
    guest stops decoding it. The sim device DMAs through the container's mappings only, so after
    the unmap its transfers fault and move nothing (the daemon logs "DMA fault, nothing moved")."""
    label = "qemu-unmap"
    argv = [ctl, "run", "--device", DEVICE, "--socket", sock, "--label", label, "--"] + \
        in_tree(root, tmp, qtest.qemu_argv([qtest.vfio_user_device("/tmp/edu.sock")], ram_mib=RAM_MIB,
                                           extra=qtest.ivshmem_args(1)))

    def state():
        mine = [x for x in containers(ctl) if x.get("label") == label]
        return (mine[0]["mappings"], mine[0]["mapped_bytes"]) if mine else (None, None)

    qt = qtest.Qtest(argv, user="%d:%d" % (NOBODY, NOBODY), stderr=sys.stderr, timeout=60)
    with qt:
        edu, _ = qtest.setup_edu(qt)
        shm = qtest.Ivshmem(qt)
        shm.place(SHM)
        before = state()
        shm.decode(True)
        mapped = wait_for(lambda: state()[0] == before[0] + 1 and state(), 5)
        tap(mapped and mapped[1] == before[1] + shm.size,
            "decoding the ivshmem BAR at 0x%x makes QEMU map it: mappings %s -> %s, mapped bytes %s -> %s" %
            (SHM, before[0], state()[0], before[1], state()[1]))

        # While mapped: the ivshmem memory -> device -> guest RAM, and guest RAM -> device -> ivshmem.
        a, b = qtest.pattern(COUNT, 5), qtest.pattern(COUNT, 6)
        tap(qtest.dma_through(qt, edu, SHM, SRC, DST, COUNT),
            "while QEMU has it mapped the device DMAs from and to the ivshmem at IOVA 0x%x" % SHM)
        canary = qtest.pattern(COUNT, 8)
        qt.write(SHM + 0x2000, canary)

        shm.decode(False)
        tap(wait_for(lambda: state() == before, 5),
            "decoding off makes QEMU unmap it: the container's mapping goes (mappings %s, mapped bytes %s)" %
            state())

        # The device buffer holds b: a DMA from the unmapped IOVA must leave it so.
        edu.to_device(SHM, COUNT)
        qt.write(DST, b"\0" * COUNT)
        edu.to_ram(DST, COUNT)
        got = qt.read(DST, COUNT)
        tap(got == b, "a DMA from the IOVA QEMU unmapped faults and moves nothing into the device (%s)" %
            ("the buffer is as before" if got == b else "the ivshmem data came" if got == a else "other bytes"))

        # The device buffer -> the unmapped IOVA: the ivshmem memory, decoded again to read it, is
        # as the guest left it.
        c = qtest.pattern(COUNT, 7)
        qt.write(SRC, c)
        edu.to_device(SRC, COUNT)
        edu.to_ram(SHM + 0x2000, COUNT)
        shm.decode(True)
        again = wait_for(lambda: state()[0] == before[0] + 1, 5)
        landed = qt.read(SHM + 0x2000, COUNT)
        tap(again and landed == canary and qt.read(SHM, COUNT) == a and qt.read(SHM + 0x1000, COUNT) == b,
            "a DMA to the IOVA QEMU unmapped moves nothing into the ivshmem (mapped again: %s)" % bool(again))
        tap(qt.quit() == 0, "QEMU exits cleanly after mapping and unmapping the ivshmem")
    tap(wait_for(lambda: state() == (None, None)), "no container is left behind")
def harness(cmd):
    """A command to the harness that runs the daemon (tests/integration/harness.py, Control)."""
    d = os.environ["VFIO_BROKER_HARNESS"]
    with open(os.path.join(d, "cmd"), "w") as f:
        f.write(cmd + "\n")
    with open(os.path.join(d, "ack")) as f:
        return f.read().strip()


def stored_sessions():
    return [name for name in harness("fds").split() if name.startswith("v")]


def restart_under_qemu(args, root, tmp, sock):
    """4. The daemon restarts while QEMU is connected; QEMU goes on as if nothing happened."""
    argv = [args.ctl, "run", "--device", DEVICE, "--socket", sock, "--label", "qemu-restart", "--"] + \
        in_tree(root, tmp, qemu_argv("/tmp/edu.sock"))
    qt = qtest.Qtest(argv, user="%d:%d" % (NOBODY, NOBODY), stderr=sys.stderr, timeout=60)

    def info():
        mine = [x for x in containers(args.ctl) if x.get("label") == "qemu-restart"]
        return mine[0] if mine else {}

    def round_trip(edu, seed):
        # The device as QEMU's guest set it up before the restart (BAR, bus master): no setup again.
        data = qtest.pattern(COUNT, seed)
        qt.write(SRC, data)
        qt.write(DST, b"\0" * COUNT)
        edu.to_device(SRC, COUNT)
        edu.to_ram(DST, COUNT)
        return qt.read(DST, COUNT) == data

    edu, ok = dma_round_trip(qt, 5)
    before = info()
    tap(ok and before.get("mapped_bytes", 0) >= RAM_MIB << 20, "QEMU DMAs through the device before the restart")
    for how, seed in (("term", 6), ("kill9", 7)):
        expect = "exited 0" if how == "term" else "killed"
        down = harness(how)
        up = harness("start")
        after = info()
        tap(down == expect and up.startswith("started") and round_trip(edu, seed),
            "after %s and a new instance (%s, %s) the same QEMU DMAs again on the same connection" % (how, down, up))
        tap(after.get("mappings") == before.get("mappings") and after.get("mapped_bytes") == before.get("mapped_bytes"),
            "its guest RAM is mapped once after %s (%s mappings, %s bytes)" % (how, after.get("mappings"),
                                                                               after.get("mapped_bytes")))
    tap(edu.identity() == 0x010000ED and edu.liveness(0x5A5A5A5A) == (~0x5A5A5A5A & 0xFFFFFFFF),
        "the device answers as before (identity, liveness)")
    status = qt.quit()
    tap(status == 0 and wait_for(lambda: not info()), "QEMU exits cleanly (%s) and the container goes" % status)
    left = wait_for(lambda: not stored_sessions() and [True]) and stored_sessions()
    tap(not left, "nothing of the session stays in the fd store (%s)" % (left or "none"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root-script", required=True)
    ap.add_argument("--ctl", required=True)
    args = ap.parse_args()

    build = subprocess.run([args.root_script], capture_output=True, text=True)
    if build.returncode != 0:
        print("Bail out! cannot build the QEMU tree: %s" % build.stderr.strip().splitlines()[-1:])
        return 1
    root = build.stdout.strip().splitlines()[-1]

    tmp = tempfile.mkdtemp(prefix="vfio-user-")
    os.chmod(tmp, 0o777)
    sock = os.path.join(tmp, "edu.sock")

    # 1. nobody runs QEMU through the broker.
    argv = [args.ctl, "run", "--device", DEVICE, "--socket", sock, "--label", "qemu-e2e", "--"] + \
        in_tree(root, tmp, qemu_argv("/tmp/edu.sock"))
    qt = qtest.Qtest(argv, user="%d:%d" % (NOBODY, NOBODY), stderr=sys.stderr, timeout=60)
    mine = [c for c in containers(args.ctl) if c.get("label") == "qemu-e2e"]
    tap(len(mine) == 1 and mine[0]["uid"] == NOBODY, "vfio-brokerctl run created a container of uid %d" % NOBODY)
    c = mine[0] if mine else {}
    tap(c.get("mapped_bytes", 0) >= RAM_MIB << 20 and c.get("balloon_inhibited") is True,
        "QEMU's guest RAM is the container's mapping (%s bytes) and the balloon is inhibited" % c.get("mapped_bytes"))
    edu, ok = dma_round_trip(qt, 1)
    tap(ok, "the brokered device DMAs guest RAM -> device -> guest RAM through the container's mappings")
    tap(edu.identity() == 0x010000ED and edu.liveness(0x12345678) == (~0x12345678 & 0xFFFFFFFF),
        "the device answers as an edu (identity, liveness)")
    marker = qtest.pattern(COUNT, 2)
    qt.write(SRC, marker)
    edu.to_device(SRC, COUNT)
    edu.to_device(OUTSIDE, COUNT)          # outside guest RAM: no mapping, so a fault, nothing moves
    qt.write(DST, b"\0" * COUNT)
    edu.to_ram(DST, COUNT)
    tap(qt.read(DST, COUNT) == marker, "a DMA from outside guest RAM moved nothing into the device")
    status = qt.quit()
    tap(status == 0, "QEMU's exit ends the run with QEMU's status (%s)" % status)
    tap(wait_for(lambda: not [x for x in containers(args.ctl) if x.get("label") == "qemu-e2e"]),
        "no container is left behind")

    # 2. One served device, several clients in turn.
    holder = subprocess.Popen([args.ctl, "run", "--device", DEVICE, "--socket", sock, "--label", "holder", "--",
                               "sleep", "600"], stderr=sys.stderr)
    held = wait_for(lambda: [x for x in containers(args.ctl) if x.get("label") == "holder"] and os.path.exists(sock))
    tap(bool(held), "vfio-brokerctl run holds a container for a stand-in VMM")

    def holder_info():
        return [x for x in containers(args.ctl) if x.get("label") == "holder"][0]

    q1 = qtest.Qtest(in_tree(root, tmp, qemu_argv("/tmp/edu.sock")), stderr=sys.stderr, timeout=60)
    _, ok = dma_round_trip(q1, 3)
    tap(ok and holder_info()["mapped_bytes"] >= RAM_MIB << 20, "QEMU #1 DMAs through the served device")
    q1.kill()
    tap(wait_for(lambda: holder_info()["mappings"] == 0), "SIGKILL of QEMU #1 drops its mappings")
    served = holder_info().get("vfio_user_devices")
    tap(served is not None and DEVICE in served, "the device stays served (%s)" % served)

    q2 = qtest.Qtest(in_tree(root, tmp, qemu_argv("/tmp/edu.sock")), stderr=sys.stderr, timeout=60)
    _, ok = dma_round_trip(q2, 4)
    tap(ok, "QEMU #2 connects to the same socket and DMAs")
    tap(q2.quit() == 0, "QEMU #2 exits cleanly")

    # Another uid than the container's (root's) is refused: QEMU cannot realize the device.
    other = subprocess.run(in_tree(root, tmp, qemu_argv("/tmp/edu.sock")) , stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60, **as_user(NOBODY))
    tap(other.returncode != 0, "a QEMU of another uid is refused (exit %d: %s)" %
        (other.returncode, (other.stderr.strip().splitlines() or [""])[-1][:120]))

    holder.send_signal(signal.SIGTERM)
    tap(holder.wait(timeout=30) == 128 + signal.SIGTERM and
        wait_for(lambda: not [x for x in containers(args.ctl) if x.get("label") == "holder"]),
        "stopping the run stops the VMM and closes the container")

    # 3. An IOVA QEMU unmapped at run time.
    qemu_unmaps(args.ctl, root, tmp, sock)
    # 4. The daemon restarts under QEMU.
    restart_under_qemu(args, root, tmp, sock)
    print("1..%d" % n, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
