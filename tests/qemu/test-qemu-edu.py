#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The unmodified QEMU of the vfio-user tests, driven through qtest against QEMU's own edu.

Proves, before the broker serves anything, every piece the end-to-end vfio-user tests stand on:
Debian testing's QEMU with the vfio-user-pci client, its command line (memfd guest RAM shareable as
fds, the vfio-user socket reachable from the chrooted QEMU, an unprivileged uid), and a qtest guest
that finds a PCI device, programs its BAR and makes it DMA between guest RAM and its buffer. At
integration only the -device argument changes (EDU_DEVICE below; see man/vfio-brokerctl-run.md.draft).

  test-qemu-edu.py --root-script make-qemu-root.sh   on the host (QEMU chrooted into the cached tree)
  test-qemu-edu.py --inside                          inside the tree already (the real-kernel VM)

TAP on stdout; timings as comments.
"""

import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qtest  # noqa: E402

RAM_MIB = 128
SRC, DST, ALIAS_PROBE = 0x100000, 0x200000, 0x300000
# Below edu's 28-bit DMA mask but above the 128 MiB of guest RAM: nothing is there.
OUTSIDE = 0x0C000000
COUNT = 2048   # QEMU 7.2's edu aborted on a full 4096-byte transfer; the VM tests keep to 2 KiB too

VFIO_USER_VERSION = 1

n = 0
failed = 0


def tap(ok, name):
    global n, failed
    n += 1
    if not ok:
        failed += 1
    print("%s %d - %s" % ("ok" if ok else "not ok", n, name), flush=True)
    return ok


def note(text):
    for line in str(text).splitlines():
        print("# " + line, flush=True)


def bail(reason):
    print("Bail out! " + reason, flush=True)
    sys.exit(1)


class Env:
    """Where QEMU runs: chrooted into `root` on the host, or directly when inside the tree."""

    def __init__(self, root, user):
        self.root = root
        self.user = user
        self.tmp = tempfile.mkdtemp(prefix="vfio-broker-qemu-")
        os.chmod(self.tmp, 0o755)

    def guest_path(self, name):
        """A file in our temporary directory as the (possibly chrooted) QEMU names it."""
        return "/tmp/" + name if self.root else os.path.join(self.tmp, name)

    def qtest(self, devices, **kw):
        return qtest.Qtest(qtest.qemu_argv(devices, ram_mib=RAM_MIB), root=self.root, tmpdir=self.tmp,
                           user=self.user, **kw)

    def run(self, argv, **kw):
        return subprocess.run(qtest.wrap_argv(argv, self.root, self.tmp, None), capture_output=True,
                              text=True, timeout=60, **kw)

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_version(env):
    r = env.run(["qemu-system-x86_64", "--version"])
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", r.stdout)
    version = tuple(int(x) for x in m.groups()) if m else None
    tap(r.returncode == 0 and version is not None and version >= (10, 1, 0),
        "QEMU >= 10.1 from Debian testing (%s)" % (r.stdout.splitlines()[0] if r.stdout else r.stderr.strip()))
    r = env.run(["qemu-system-x86_64", "-device", "help"])
    tap('name "vfio-user-pci"' in r.stdout, "QEMU has the vfio-user-pci client device")


def recv_exact(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("QEMU closed the vfio-user socket after %d of %d bytes" % (len(data), size))
        data += chunk
    return data


def check_vfio_user_command_line(env):
    """The -device form the man page gives reaches the socket and starts the protocol: a listener
    of ours (no server yet) receives QEMU's VFIO_USER_VERSION, then hangs up; QEMU must then fail."""
    path = os.path.join(env.tmp, "vfio-user.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)   # QEMU runs as another uid; the broker's policy is on SO_PEERCRED
    listener.listen(1)
    listener.settimeout(30)
    device = qtest.vfio_user_device(env.guest_path("vfio-user.sock"))
    argv = qtest.qemu_argv([device], ram_mib=RAM_MIB)
    proc = qtest.popen(argv, env.root, env.tmp, env.user, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    ok, what = False, ""
    try:
        conn, _ = listener.accept()
        conn.settimeout(30)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        header = recv_exact(conn, 16)
        msg_id, command, size, flags, error = struct.unpack("<HHIII", header)
        payload = recv_exact(conn, size - 16) if size > 16 else b""
        major, minor = struct.unpack("<HH", payload[:4])
        caps = json.loads(payload[4:].rstrip(b"\0").decode()) if len(payload) > 4 else {}
        # QEMU 11.1's client offers 0.0 (VFIO_USER_MINOR_VER in hw/vfio-user/protocol.h) although
        # docs/interop/vfio-user.rst describes 0.1: a server must accept major 0, any minor.
        ok = (command == VFIO_USER_VERSION and flags & 0xF == 0 and major == 0
              and "capabilities" in caps and str(uid) == env.user.split(":")[0])
        what = "command %d, version %d.%d, from uid %d: %s" % (command, major, minor, uid, json.dumps(caps))
        conn.close()
    except (OSError, EOFError, ValueError, struct.error) as e:
        what = "no VFIO_USER_VERSION: %s" % e
    finally:
        listener.close()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    tap(ok, "-device '%s' connects to the socket and sends VFIO_USER_VERSION" % device)
    note(what)
    tap(proc.returncode not in (0, None) and b"vfu0" in err,
        "QEMU refuses to start when the vfio-user server hangs up (exit %s)" % proc.returncode)
    note(err.decode(errors="replace").strip())


def check_edu(env, device):
    # QEMU's stderr goes to a file, not a pipe nobody reads while it runs.
    errors = tempfile.TemporaryFile()

    def stderr_text():
        errors.seek(0)
        return errors.read().decode(errors="replace").strip()

    t0 = time.monotonic()
    try:
        qt = env.qtest([device], stderr=errors)
    except (OSError, qtest.QtestError) as e:
        tap(False, "QEMU starts under qtest with -device %s: %s" % (device, e))
        note(stderr_text())
        return
    with qt:
        started = qt.ready - t0
        tap(True, "QEMU starts under qtest with -device %s, memfd guest RAM (share=on), uid %s" %
            (device, env.user))
        note("timing: QEMU answered qtest %.3f s after it was started" % started)
        try:
            t1 = time.monotonic()
            edu, where = qtest.setup_edu(qt)
            tap(where["class_rev"] >> 16 == 0x00FF and where["bar_size"] == 1 << 20,
                "edu 1234:11e8 found at 00:%02x.%x, class 0x%04x, BAR0 of %d KiB mapped at 0x%x" %
                (where["dev"], where["fn"], where["class_rev"] >> 16, where["bar_size"] >> 10,
                 qtest.DEFAULT_BAR_BASE))
            ident, live = edu.identity(), edu.liveness(0x12345678)
            tap(ident == 0x010000ED and live == (~0x12345678 & 0xFFFFFFFF),
                "BAR0 works: identity 0x%08x, liveness 0x12345678 -> 0x%08x" % (ident, live))
            note("timing: device usable (config space, BAR0) %.3f s after QEMU was started" %
                 (time.monotonic() - t0))

            # Guest RAM -> device buffer -> another guest address.
            a = qtest.pattern(COUNT, 1)
            qt.write(SRC, a)
            qt.write(DST, b"\0" * COUNT)
            t2 = time.monotonic()
            edu.to_device(SRC, COUNT)
            edu.to_ram(DST, COUNT)
            back = qt.read(DST, COUNT)
            tap(back == a, "DMA of %d bytes guest RAM 0x%x -> edu buffer -> guest RAM 0x%x arrives intact" %
                (COUNT, SRC, DST))
            note("timing: the two DMAs took %.3f s; set-up to done %.3f s" %
                 (time.monotonic() - t2, time.monotonic() - t1))

            # The device buffer -> an address outside guest RAM: nothing in RAM changes, nothing
            # is there to read back, and no wrap-around lands it at the same offset in RAM.
            b = qtest.pattern(COUNT, 2)
            qt.write(SRC, b)
            edu.to_device(SRC, COUNT)
            alias = OUTSIDE % (RAM_MIB << 20)
            canary = qtest.pattern(COUNT, 3)
            qt.write(alias, canary)
            before = qt.read(0, 4 << 20)
            edu.to_ram(OUTSIDE, COUNT)
            tap(qt.read(alias, COUNT) == canary and qt.read(0, 4 << 20) == before and
                qt.read(OUTSIDE, COUNT) != b,
                "DMA to 0x%x (outside the %d MiB of guest RAM) writes nothing into guest RAM" %
                (OUTSIDE, RAM_MIB))

            # An address outside guest RAM -> the device: none of guest RAM's data comes back.
            qt.write(ALIAS_PROBE, b"\0" * COUNT)
            edu.to_device(OUTSIDE, COUNT)
            edu.to_ram(ALIAS_PROBE, COUNT)
            got = qt.read(ALIAS_PROBE, COUNT)
            tap(got != canary and got != a,
                "DMA from 0x%x (outside guest RAM) brings no guest data into the device" % OUTSIDE)
            note("the buffer then held %s" % ("the previous transfer" if got == b else
                                              "zeros" if got == b"\0" * COUNT else "other bytes"))
        except qtest.QtestError as e:
            tap(False, "the qtest guest drives the edu: %s" % e)
        rc = qt.quit()
        err = stderr_text()
        tap(rc == 0, "QEMU exits cleanly on SIGTERM (status %s)" % rc)
        if err:
            note(err)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--root-script", help="make-qemu-root.sh: build or reuse the cached tree, chroot into it")
    where.add_argument("--root", help="an existing tree to chroot into")
    where.add_argument("--inside", action="store_true", help="already inside the tree (the VM)")
    ap.add_argument("--user", default="65534:65534", help="uid:gid QEMU runs as (default: nobody)")
    ap.add_argument("--device", default="edu", help="the -device under test (default: QEMU's own edu)")
    args = ap.parse_args()

    root = args.root
    if args.root_script:
        t0 = time.monotonic()
        r = subprocess.run([args.root_script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        note(r.stderr.strip())
        if r.returncode != 0:
            bail("no QEMU tree: %s" % (r.stderr.strip().splitlines() or ["make-qemu-root.sh failed"])[-1])
        root = r.stdout.strip()
        note("timing: the QEMU tree was ready after %.1f s" % (time.monotonic() - t0))
    env = Env(root, args.user)
    try:
        check_version(env)
        check_vfio_user_command_line(env)
        check_edu(env, args.device)
    finally:
        env.cleanup()
    print("1..%d" % n)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
