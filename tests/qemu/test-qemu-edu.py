#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The unmodified QEMU of the vfio-user tests, driven through qtest against QEMU's own edu.

Proves, before the broker serves anything, every piece the end-to-end vfio-user tests stand on:
Debian testing's QEMU with the vfio-user-pci client, its command line (memfd guest RAM shareable as
fds, the vfio-user socket reachable from the chrooted QEMU, an unprivileged uid), what its client
sends a server before it asks about the device (its guest RAM as DMA_MAPs with fds), and a qtest guest
that finds a PCI device, programs its BAR and makes it DMA between guest RAM and its buffer, and
a memory region QEMU maps and unmaps while it runs (an ivshmem BAR, check_unmap). At integration
only the -device argument changes (EDU_DEVICE below; see man/vfio-brokerctl-run.md.draft).

  test-qemu-edu.py --root-script make-qemu-root.sh   on the host (QEMU chrooted into the cached tree)
  test-qemu-edu.py --inside                          inside the tree already (the real-kernel VM)

TAP on stdout; timings as comments.
"""

import argparse
import errno
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

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qtest  # noqa: E402

RAM_MIB = 128
SRC, DST, ALIAS_PROBE = 0x100000, 0x200000, 0x300000
# Below edu's 28-bit DMA mask but above the 128 MiB of guest RAM: nothing is there.
OUTSIDE = 0x0C000000
COUNT = 2048   # QEMU 7.2's edu aborted on a full 4096-byte transfer; the VM tests keep to 2 KiB too
# Where check_unmap's guest decodes the ivshmem's BAR2: above guest RAM, away from OUTSIDE, below
# edu's 28-bit DMA mask.
SHM = 0x0D000000

# docs/interop/vfio-user.rst
VFIO_USER_VERSION = 1
VFIO_USER_DMA_MAP = 2
VFIO_USER_DMA_UNMAP = 3
VFIO_USER_REPLY = 0x1
VFIO_USER_ERROR = 0x10

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


def recv_message(conn):
    """One vfio-user message: (header fields, payload, fds); None at EOF. Fds come with the header."""
    head, fds, _, _ = socket.recv_fds(conn, 16, 64)
    if not head:
        return None
    head += recv_exact(conn, 16 - len(head))
    msg_id, command, size, flags, error = struct.unpack("<HHIII", head)
    return (msg_id, command, size, flags), recv_exact(conn, size - 16), fds


def fd_name(fd):
    try:
        return os.readlink("/proc/self/fd/%d" % fd)
    except OSError as e:
        return "? (%s)" % e.strerror


def vfio_user_client_session(env, aux_ram_share):
    """What QEMU's vfio-user client sends before it asks about the device. A listener of ours (not a
    server: the broker will be) answers VFIO_USER_VERSION (0.0), acknowledges DMA_MAP and
    DMA_UNMAP, and refuses the first other request with ENOTSUP, after which QEMU must unmap what it
    mapped and exit with an error. The -device form is the one the man page gives."""
    name = "vfio-user-%d.sock" % aux_ram_share
    path = os.path.join(env.tmp, name)
    listener = qtest.unix_listener(path)
    listener.settimeout(30)
    device = qtest.vfio_user_device(env.guest_path(name))
    argv = qtest.qemu_argv([device], ram_mib=RAM_MIB)
    if not aux_ram_share:
        argv[argv.index("-machine") + 1] = "q35,memory-backend=ram"
    proc = qtest.popen(argv, env.root, env.tmp, env.user, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    s = dict(device=device, uid=None, version=None, caps={}, maps=[], unmaps=[], refused=None, error="")
    try:
        conn, _ = listener.accept()
        conn.settimeout(30)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        s["uid"] = struct.unpack("3i", creds)[1]
        while True:
            m = recv_message(conn)
            if m is None:
                break
            (msg_id, command, size, flags), payload, fds = m
            reply = b""
            if flags & 0xF != 0:   # not a command
                s["error"] = "message %d is not a command (flags %#x)" % (command, flags)
                break
            if command == VFIO_USER_VERSION and s["version"] is None:
                s["version"] = struct.unpack("<HH", payload[:4])
                s["caps"] = json.loads(payload[4:].rstrip(b"\0").decode())
                caps = {"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "pgsizes": 4096,
                                         "max_dma_maps": 65535}}
                reply = struct.pack("<HH", 0, 0) + json.dumps(caps).encode() + b"\0"
            elif command == VFIO_USER_DMA_MAP:
                argsz, map_flags, offset, addr, length = struct.unpack("<IIQQQ", payload[:32])
                s["maps"].append(dict(addr=addr, size=length, flags=map_flags, offset=offset,
                                      fds=[fd_name(fd) for fd in fds]))
            elif command == VFIO_USER_DMA_UNMAP:
                argsz, unmap_flags, addr, length = struct.unpack("<IIQQ", payload[:24])
                s["unmaps"].append((addr, length))
                reply = payload[:24]
            else:
                if s["refused"] is None:
                    s["refused"] = command
                conn.sendall(struct.pack("<HHIII", msg_id, command, 16, VFIO_USER_REPLY | VFIO_USER_ERROR,
                                         errno.ENOTSUP))
                reply = None
            for fd in fds:
                os.close(fd)
            if reply is not None:
                conn.sendall(struct.pack("<HHIII", msg_id, command, 16 + len(reply), VFIO_USER_REPLY, 0) + reply)
        conn.close()
    except (OSError, EOFError, ValueError, struct.error) as e:
        s["error"] = str(e)
    finally:
        listener.close()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    s["rc"] = proc.returncode
    s["stderr"] = err.decode(errors="replace").strip()
    return s


def describe_maps(maps):
    return ", ".join("[%#x, +%#x) flags %d %s" % (m["addr"], m["size"], m["flags"],
                                                   m["fds"][0] if m["fds"] else "without fd") for m in maps)


def check_vfio_user_client(env):
    s = vfio_user_client_session(env, aux_ram_share=True)
    if s["error"]:
        note("the session: " + s["error"])
    # QEMU 11.1's client offers 0.0 (VFIO_USER_MINOR_VER in hw/vfio-user/protocol.h) although
    # docs/interop/vfio-user.rst describes 0.1: a server must accept major 0, any minor.
    tap(s["version"] is not None and s["version"][0] == 0 and "capabilities" in s["caps"] and
        s["uid"] == int(env.user.split(":")[0]),
        "-device '%s' connects to the socket and sends VFIO_USER_VERSION from uid %s" % (s["device"], s["uid"]))
    note("version %s, %s" % (s["version"], json.dumps(s["caps"])))
    ram = [m for m in s["maps"] if m["addr"] == 0]
    tap(len(ram) == 1 and ram[0]["size"] == RAM_MIB << 20 and ram[0]["flags"] == 3 and
        len(ram[0]["fds"]) == 1 and ram[0]["fds"][0].startswith("/memfd:"),
        "guest RAM arrives as one DMA_MAP of %d MiB at IOVA 0, read/write, with its memfd" % RAM_MIB)
    tap(s["maps"] and all(len(m["fds"]) == 1 for m in s["maps"]),
        "with aux-ram-share=on every DMA_MAP carries an fd")
    note("DMA_MAPs: " + describe_maps(s["maps"]))
    mapped = sorted((m["addr"], m["size"]) for m in s["maps"])
    tap(s["refused"] is not None and sorted(s["unmaps"]) == mapped and s["rc"] not in (0, None) and
        "vfu0" in s["stderr"],
        "when the server refuses request %s QEMU unmaps all it mapped and exits with an error (%s)" %
        (s["refused"], s["rc"]))
    note(s["stderr"])

    s = vfio_user_client_session(env, aux_ram_share=False)
    tap([m for m in s["maps"] if not m["fds"]] and all(m["fds"] for m in s["maps"] if m["addr"] == 0),
        "without aux-ram-share=on QEMU's firmware arrives as a DMA_MAP without an fd (guest RAM still with one)")
    note("DMA_MAPs: " + describe_maps(s["maps"]))


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
        time.sleep(1)
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


def wait_for(cond, timeout=5.0):
    return qtest.wait_for(cond, timeout)


def dmar_faults():
    """Faults the IOMMU reported: the count of its fault interrupt (dmar_fault(), "DMAR-MSI"), as
    tests/vm/vm-client.c reads it (dmesg rate-limits the messages). None without such a line."""
    try:
        with open("/proc/interrupts") as f:
            lines = [line for line in f if "DMAR-MSI" in line]
    except OSError:
        return None
    if not lines:
        return None
    total = 0
    for line in lines:
        for field in line.split(":", 1)[1].split():
            if not field.isdigit():
                break
            total += int(field)
    return total


def more_dmar_faults(than):
    """The fault count once it is above `than` (faults are reported by an interrupt, a moment after
    the DMA); None if it stays there or cannot be read."""
    n = wait_for(lambda: than is not None and (dmar_faults() or 0) > than and dmar_faults())
    return n or None


def pinned_kib(pid):
    """What process `pid` has locked or pinned (VmLck + VmPin), in KiB: where type1 accounts the
    pages the broker pins for its mappings."""
    kib = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmLck:", "VmPin:")):
                kib += int(line.split()[1])
    return kib


def check_unmap(env, device, broker_pid=None, dmar=False):
    """An IOVA QEMU unmaps while it runs: an ivshmem-plain's BAR2 (a memfd) is guest-physical RAM
    while the qtest guest decodes it, so QEMU's vfio listener maps it for a vfio-user device and
    unmaps it when decoding goes off (guest RAM itself stays mapped as long as QEMU runs). The
    device DMAs there both ways while it is decoded; afterwards a DMA from or to that address moves
    nothing. With QEMU's own edu this shows the guest's part (the BAR really leaves the address
    space); with the broker's real edu (the VM) `broker_pid` also checks the broker pins and unpins
    the ivshmem as QEMU maps and unmaps it, and `dmar` that the blocked DMAs fault in the IOMMU."""
    errors = tempfile.TemporaryFile()
    argv = qtest.qemu_argv([device], ram_mib=RAM_MIB, extra=qtest.ivshmem_args(1))
    try:
        qt = qtest.Qtest(argv, root=env.root, tmpdir=env.tmp, user=env.user, stderr=errors)
    except (OSError, qtest.QtestError) as e:
        tap(False, "QEMU starts under qtest with -device %s and an ivshmem-plain: %s" % (device, e))
        time.sleep(1)
        errors.seek(0)
        note(errors.read().decode(errors="replace").strip())
        return
    with qt:
        try:
            edu, _ = qtest.setup_edu(qt)
            shm = qtest.Ivshmem(qt)
            shm.place(SHM)
            p0 = pinned_kib(broker_pid) if broker_pid else None
            shm.decode(True)
            if broker_pid:
                p1 = wait_for(lambda: pinned_kib(broker_pid) >= p0 + (shm.size >> 10) and pinned_kib(broker_pid))
                tap(p1, "decoding the ivshmem BAR at 0x%x: QEMU maps it and the broker pins its %d KiB "
                    "(%d -> %d KiB)" % (SHM, shm.size >> 10, p0, pinned_kib(broker_pid)))

            # Decoded: the ivshmem -> device -> guest RAM, and guest RAM -> device -> the ivshmem.
            a, b, canary = qtest.pattern(COUNT, 5), qtest.pattern(COUNT, 6), qtest.pattern(COUNT, 8)
            tap(qtest.dma_through(qt, edu, SHM, SRC, DST, COUNT),
                "the device DMAs from and to the ivshmem at 0x%x while the guest decodes it" % SHM)
            qt.write(SHM + 0x2000, canary)

            shm.decode(False)
            if broker_pid:
                tap(wait_for(lambda: pinned_kib(broker_pid) <= p0),
                    "decoding off: QEMU unmaps it and the broker unpins it (%d KiB, was %d KiB before the map)" %
                    (pinned_kib(broker_pid), p0))

            # The device buffer holds b; a DMA from the unmapped SHM must not bring the ivshmem's a.
            f0 = dmar_faults()
            edu.to_device(SHM, COUNT)
            f1 = more_dmar_faults(f0) if dmar else None
            qt.write(DST, b"\0" * COUNT)
            edu.to_ram(DST, COUNT)
            got = qt.read(DST, COUNT)
            tap(got != a, "a DMA from 0x%x after the unmap brings none of the ivshmem's data into the device (%s)" %
                (SHM, "the buffer is as before" if got == b else "zeros" if got == b"\0" * COUNT else
                 "the ivshmem data" if got == a else "other bytes"))

            # The device buffer -> SHM: the ivshmem, decoded again to read it, is as the guest left it.
            f2 = dmar_faults()
            edu.to_ram(SHM + 0x2000, COUNT)
            f3 = more_dmar_faults(f2) if dmar else None
            shm.decode(True)
            landed = qt.read(SHM + 0x2000, COUNT)
            tap(landed == canary and qt.read(SHM, COUNT) == a and qt.read(SHM + 0x1000, COUNT) == b,
                "a DMA to 0x%x after the unmap moves nothing into the ivshmem" % SHM)
            if dmar:
                tap(f1 is not None and f3 is not None,
                    "the DMA from and the DMA to the IOVA QEMU unmapped fault in the IOMMU (DMAR %s -> %s, %s -> %s)" %
                    (f0, f1 or dmar_faults(), f2, f3 or dmar_faults()))
            if broker_pid:
                tap(wait_for(lambda: pinned_kib(broker_pid) >= p0 + (shm.size >> 10)),
                    "decoding again: QEMU maps it again (%d KiB pinned)" % pinned_kib(broker_pid))
        except qtest.QtestError as e:
            tap(False, "the qtest guest maps and unmaps the ivshmem: %s" % e)
        rc = qt.quit()
        tap(rc == 0, "QEMU exits cleanly after the ivshmem came and went (status %s)" % rc)
        errors.seek(0)
        err = errors.read().decode(errors="replace").strip()
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
    ap.add_argument("--broker-pid", type=int,
                    help="the device is this vfio-brokerd's: check it pins and unpins what QEMU maps and unmaps")
    ap.add_argument("--dmar", action="store_true",
                    help="the device DMAs through an Intel IOMMU: blocked DMAs must count as DMAR faults")
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
        check_vfio_user_client(env)
        check_edu(env, args.device)
        check_unmap(env, args.device, args.broker_pid, args.dmar)
    finally:
        env.cleanup()
    print("1..%d" % n)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
