# SPDX-License-Identifier: LGPL-2.1-or-later
"""A guest without a guest OS: drives an unmodified QEMU through its qtest protocol.

QEMU runs with `-accel qtest -qtest stdio`: no vCPU executes, and this module plays the guest. It
reads and writes PCI config space through the 0xcf8/0xcfc ports, programs BARs, touches MMIO and
guest RAM, and steps the virtual clock. That is all a test needs to make a PCI device DMA between
guest RAM and itself, whichever side implements the device: QEMU's own `-device edu` today, the
broker's device behind `-device vfio-user-pci,socket=...` at the end of issue 13.

QEMU comes from a Debian testing tree (make-qemu-root.sh), because Debian 12's QEMU predates
vfio-user. On the host it runs chrooted there, in a private mount namespace whose /tmp is a
directory of the caller's (so sockets the test binds are reachable by the chrooted QEMU); inside the
test VM the driver already runs inside the tree and starts QEMU directly (root=None).

Guest RAM is a shareable memfd (`memory-backend-memfd,share=on`), which vfio-user needs to pass it
as fds with VFIO_USER_DMA_MAP; `aux-ram-share=on` makes QEMU's other RAM (BIOS, option ROMs)
shareable too, so no DMA_MAP arrives without an fd. Both work unchanged with the built-in edu.

Runs on Debian 12's python3 (3.11) and in the tree's (newer); standard library only.
"""

import base64
import json
import os
import select
import signal
import socket
import subprocess
import time

EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8
# QEMU's ivshmem-plain (hw/misc/ivshmem-pci.c): BAR2, 64-bit prefetchable, is its shared memory.
IVSHMEM_VENDOR, IVSHMEM_DEVICE = 0x1AF4, 0x1110
IVSHMEM_SHM_BAR = 2

# Registers of QEMU's edu (hw/misc/edu.c), which the sim backend's devices copy (SPEC).
EDU_IDENTITY = 0x00
EDU_LIVENESS = 0x04
EDU_DMA_SRC = 0x80
EDU_DMA_DST = 0x88
EDU_DMA_COUNT = 0x90
EDU_DMA_CMD = 0x98
EDU_DMA_START = 0x1
EDU_DMA_TO_RAM = 0x2
EDU_BUFFER = 0x40000
EDU_BUFFER_SIZE = 4096
# edu clamps DMA addresses to its 28-bit mask: everything a test DMAs to must be below 256 MiB.
EDU_DMA_LIMIT = 1 << 28

PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_CLASS_REVISION = 0x08
PCI_BAR0 = 0x10

# A free spot in q35's 32-bit PCI hole (above the MMCONFIG window at 0xb0000000, below the IOAPIC).
DEFAULT_BAR_BASE = 0xE0000000


class QtestError(Exception):
    pass


def qemu_argv(devices, ram_mib=128, extra=()):
    """The QEMU command line every test uses; `devices` are full `-device` arguments' values."""
    argv = ["qemu-system-x86_64",
            "-machine", "q35,memory-backend=ram,aux-ram-share=on",
            "-accel", "qtest",
            "-object", "memory-backend-memfd,id=ram,size=%dM,share=on" % ram_mib,
            "-m", "%dM" % ram_mib,
            "-display", "none", "-nodefaults", "-no-user-config",
            "-qtest", "stdio", "-qtest-log", "/dev/null"]
    for d in devices:
        argv += ["-device", d]
    return argv + list(extra)


def vfio_user_device(path, dev_id="vfu0"):
    """The -device value for QEMU's vfio-user client on the unix socket `path` (as QEMU names it).
    QEMU 11.1 accepts the nested socket object only in -device's JSON form."""
    return json.dumps({"driver": "vfio-user-pci", "id": dev_id, "socket": {"type": "unix", "path": path}})


def unix_listener(path, mode=0o777):
    """A listening AF_UNIX stream socket at `path` for QEMU's vfio-user client to connect to: what
    a test hands the broker (ServeVfioUser's `h listener`) or answers itself. `mode`: QEMU may run
    as another uid than the test; who may use the device is decided on SO_PEERCRED, not here."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, mode)
        listener.listen(1)
    except OSError:
        listener.close()
        raise
    return listener


def wrap_argv(argv, root=None, tmpdir=None, user=None):
    """How to start `argv` from the tree at `root` (None: we are inside it already).

    On the host: a private mount namespace (so nothing is mounted in the shared cache for longer
    than QEMU lives), /proc, `tmpdir` on the tree's /tmp, then chroot, dropping to `user`
    ("uid:gid") if given. Needs root, as chroot does."""
    if root is None:
        return argv
    script = 'root=$1 tmp=$2; shift 2; mount -t proc proc "$root/proc" || exit 125; '
    if tmpdir:
        script += 'mount --bind "$tmp" "$root/tmp" || exit 125; '
    script += 'exec chroot %s"$root" "$@"' % ("--userspec=%s " % user if user else "")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            root, tmpdir or ""] + argv


def popen(argv, root=None, tmpdir=None, user=None, **kw):
    """Starts `argv` from the tree (see wrap_argv) as `user`, chrooted or not."""
    if root is None and user:
        uid, gid = (int(x) for x in user.split(":"))
        # Already that user (e.g. root of an unprivileged user namespace, where setgroups() is
        # denied): nothing to drop.
        if (uid, gid) != (os.getuid(), os.getgid()):
            kw.update(user=uid, group=gid, extra_groups=[])
    return subprocess.Popen(wrap_argv(argv, root, tmpdir, user), **kw)


class Qtest:
    """One QEMU process and its qtest stream."""

    def __init__(self, argv, root=None, tmpdir=None, user=None, stderr=None, timeout=60):
        self.timeout = timeout
        self.irqs = []      # asynchronous "IRQ raise|lower N" lines seen so far
        self.buf = b""
        self.started = time.monotonic()
        self.proc = popen(argv, root, tmpdir, user, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=stderr)
        # The first answer proves QEMU finished its set-up (devices realized, vfio-user connected).
        self.cmd("readl 0x0")
        self.ready = time.monotonic()

    # --- the protocol -------------------------------------------------------------------------
    def _readline(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QtestError("QEMU did not answer within %d s" % self.timeout)
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if not r:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                rc = self.proc.poll()
                raise QtestError("QEMU closed its qtest stream (exit status %s)" % rc)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def cmd(self, line):
        """Sends one request, returns what follows OK; FAIL raises."""
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise QtestError("QEMU is gone (exit status %s) before %r" % (self.proc.poll(), line))
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._readline(deadline)
            if reply.startswith("IRQ "):
                self.irqs.append(reply[4:])
                continue
            if reply == "OK" or reply.startswith("OK "):
                return reply[3:]
            raise QtestError("%r: %s" % (line, reply))

    def _value(self, line):
        return int(self.cmd(line), 0)

    def outl(self, port, value):
        self.cmd("outl 0x%x 0x%x" % (port, value))

    def outw(self, port, value):
        self.cmd("outw 0x%x 0x%x" % (port, value))

    def inl(self, port):
        return self._value("inl 0x%x" % port)

    def readl(self, addr):
        return self._value("readl 0x%x" % addr)

    def writel(self, addr, value):
        self.cmd("writel 0x%x 0x%x" % (addr, value))

    def readq(self, addr):
        return self._value("readq 0x%x" % addr)

    def writeq(self, addr, value):
        self.cmd("writeq 0x%x 0x%x" % (addr, value))

    def read(self, addr, size):
        """Guest memory as bytes (b64read: one line, a third of `read`'s hex)."""
        data = base64.b64decode(self.cmd("b64read 0x%x 0x%x" % (addr, size)))
        if len(data) != size:
            raise QtestError("b64read returned %d bytes, not %d" % (len(data), size))
        return data

    def write(self, addr, data):
        self.cmd("b64write 0x%x 0x%x %s" % (addr, len(data), base64.b64encode(data).decode()))

    def clock_step(self, ns):
        return self._value("clock_step %d" % ns)

    # --- the end --------------------------------------------------------------------------------
    def alive(self):
        return self.proc.poll() is None

    def quit(self, timeout=20):
        """SIGTERM, as libqtest does; returns QEMU's exit status (0 when it shut down cleanly)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise QtestError("QEMU ignored SIGTERM for %d s" % timeout)
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def kill(self):
        """SIGKILL (what a crashing VMM looks like to the other side)."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.kill()
        return False


class Pci:
    """Configuration mechanism #1 (ports 0xcf8/0xcfc) on bus 0, which is all q35 needs here."""

    def __init__(self, qt):
        self.qt = qt

    @staticmethod
    def _address(dev, fn, offset):
        return 0x80000000 | (dev << 11) | (fn << 8) | (offset & 0xFC)

    def read32(self, dev, fn, offset):
        self.qt.outl(0xCF8, self._address(dev, fn, offset))
        return self.qt.inl(0xCFC)

    def write32(self, dev, fn, offset, value):
        self.qt.outl(0xCF8, self._address(dev, fn, offset))
        self.qt.outl(0xCFC, value)

    def read16(self, dev, fn, offset):
        return (self.read32(dev, fn, offset) >> ((offset & 2) * 8)) & 0xFFFF

    def write16(self, dev, fn, offset, value):
        self.qt.outl(0xCF8, self._address(dev, fn, offset))
        self.qt.outw(0xCFC + (offset & 2), value)

    def devices(self):
        """(dev, fn, vendor, device) of every function on bus 0, in order (a generator, so a search
        stops at its device instead of costing a scan of the whole bus)."""
        for dev in range(32):
            for fn in range(8):
                ids = self.read32(dev, fn, 0)
                if ids & 0xFFFF == 0xFFFF:
                    if fn == 0:
                        break
                    continue
                yield dev, fn, ids & 0xFFFF, ids >> 16
                # Functions 1-7 exist only on a multi-function device (header type bit 7).
                if fn == 0 and not (self.read32(dev, fn, 0x0C) >> 16) & 0x80:
                    break

    def find(self, vendor, device):
        for dev, fn, v, d in self.devices():
            if (v, d) == (vendor, device):
                return dev, fn
        raise QtestError("no %04x:%04x on PCI bus 0 (found: %s)" % (
            vendor, device, ", ".join("%02x.%x %04x:%04x" % x for x in self.devices()) or "nothing"))

    def size_bar(self, dev, fn, bar=0):
        """(size, is_64bit) of a memory BAR, by the classic write-all-ones probe."""
        offset = PCI_BAR0 + 4 * bar
        old = self.read32(dev, fn, offset)
        if old & 1:
            raise QtestError("BAR%d of %02x.%x is an I/O BAR" % (bar, dev, fn))
        is_64 = (old >> 1) & 3 == 2
        self.write32(dev, fn, offset, 0xFFFFFFFF)
        low = self.read32(dev, fn, offset)
        self.write32(dev, fn, offset, old)
        mask = low & ~0xF
        if is_64:
            old_high = self.read32(dev, fn, offset + 4)
            self.write32(dev, fn, offset + 4, 0xFFFFFFFF)
            mask |= self.read32(dev, fn, offset + 4) << 32
            self.write32(dev, fn, offset + 4, old_high)
            size = (~mask + 1) & 0xFFFFFFFFFFFFFFFF
        else:
            size = (~mask + 1) & 0xFFFFFFFF
        if mask == 0 or size == 0:
            raise QtestError("BAR%d of %02x.%x is not implemented" % (bar, dev, fn))
        return size, is_64

    def map_bar(self, dev, fn, bar, base):
        """Places the BAR at `base` and turns on memory decoding and bus mastering (DMA)."""
        offset = PCI_BAR0 + 4 * bar
        size, is_64 = self.size_bar(dev, fn, bar)
        if base % size:
            raise QtestError("0x%x is not aligned to BAR%d's size 0x%x" % (base, bar, size))
        self.write32(dev, fn, offset, base & 0xFFFFFFFF)
        if is_64:
            self.write32(dev, fn, offset + 4, base >> 32)
        command = self.read16(dev, fn, PCI_COMMAND)
        self.write16(dev, fn, PCI_COMMAND, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        return size


class Edu:
    """QEMU's edu DMA engine (or the broker's copy of it) at a programmed BAR0."""

    def __init__(self, qt, bar):
        self.qt = qt
        self.bar = bar

    def identity(self):
        return self.qt.readl(self.bar + EDU_IDENTITY)

    def liveness(self, value):
        """What the liveness register reads after `value` was written (the inverse, when alive)."""
        self.qt.writel(self.bar + EDU_LIVENESS, value)
        return self.qt.readl(self.bar + EDU_LIVENESS)

    def dma(self, src, dst, count, to_ram, timeout=10.0):
        """Runs one transfer and waits for the start bit to clear. QEMU's edu completes on the
        virtual clock (100 ms after the start), the broker's in real time: step the clock while
        polling, which serves both. Returns the command register's final value."""
        if not 0 < count <= EDU_BUFFER_SIZE:
            raise ValueError("edu moves 1..%d bytes" % EDU_BUFFER_SIZE)
        self.qt.writeq(self.bar + EDU_DMA_SRC, src)
        self.qt.writeq(self.bar + EDU_DMA_DST, dst)
        self.qt.writeq(self.bar + EDU_DMA_COUNT, count)
        self.qt.writeq(self.bar + EDU_DMA_CMD, EDU_DMA_START | (EDU_DMA_TO_RAM if to_ram else 0))
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            cmd = self.qt.readq(self.bar + EDU_DMA_CMD)
            if not cmd & EDU_DMA_START:
                return cmd
            if time.monotonic() > deadline:
                raise QtestError("edu DMA %#x -> %#x (%d bytes) still running after %.0f s" %
                                 (src, dst, count, timeout))
            self.qt.clock_step(10_000_000)
            polls += 1
            if polls > 20:
                time.sleep(0.001)

    def to_device(self, ram, count, offset=0):
        """Guest RAM at `ram` -> the device buffer at `offset`."""
        return self.dma(ram, EDU_BUFFER + offset, count, to_ram=False)

    def to_ram(self, ram, count, offset=0):
        """The device buffer at `offset` -> guest RAM at `ram`."""
        return self.dma(EDU_BUFFER + offset, ram, count, to_ram=True)


class Ivshmem:
    """QEMU's ivshmem-plain: its BAR2 is a RAM region backed by a memory backend of the command line
    (ivshmem_args). While the guest decodes it (BAR2 programmed, memory space enabled in the command
    register) it is guest-physical RAM, so QEMU's vfio listener maps it for a vfio(-user) device,
    with the backend's fd for vfio-user; when the guest turns decoding off or moves the BAR, QEMU
    unmaps it. That is the one way a qtest guest, which never runs guest code, makes QEMU map and
    unmap DMA memory while it runs: guest RAM itself stays mapped for QEMU's whole life."""

    def __init__(self, qt):
        self.pci = Pci(qt)
        self.dev, self.fn = self.pci.find(IVSHMEM_VENDOR, IVSHMEM_DEVICE)
        self.size, _ = self.pci.size_bar(self.dev, self.fn, IVSHMEM_SHM_BAR)

    def place(self, base):
        """Programs BAR2 at `base` (decoding stays as it is)."""
        if base % self.size:
            raise QtestError("0x%x is not aligned to the ivshmem BAR's size 0x%x" % (base, self.size))
        offset = PCI_BAR0 + 4 * IVSHMEM_SHM_BAR
        self.pci.write32(self.dev, self.fn, offset, base & 0xFFFFFFFF)
        self.pci.write32(self.dev, self.fn, offset + 4, base >> 32)

    def decode(self, on):
        """Memory space enable in the command register: the BAR appears in, or leaves, the guest's
        physical address space (and so QEMU's DMA_MAP, or DMA_UNMAP, of it)."""
        command = self.pci.read16(self.dev, self.fn, PCI_COMMAND)
        command = command | PCI_COMMAND_MEMORY if on else command & ~PCI_COMMAND_MEMORY
        self.pci.write16(self.dev, self.fn, PCI_COMMAND, command)


def ivshmem_args(size_mib=1, backend_id="shm"):
    """Extra QEMU arguments for an ivshmem-plain whose BAR2 is a shareable memfd of `size_mib` MiB."""
    return ["-object", "memory-backend-memfd,id=%s,size=%dM,share=on" % (backend_id, size_mib),
            "-device", "ivshmem-plain,memdev=%s" % backend_id]


def setup_edu(qt, vendor=EDU_VENDOR, device=EDU_DEVICE, base=DEFAULT_BAR_BASE):
    """Finds the device, maps BAR0 at `base` with memory and bus master on; returns (Edu, where)."""
    pci = Pci(qt)
    dev, fn = pci.find(vendor, device)
    size = pci.map_bar(dev, fn, 0, base)
    return Edu(qt, base), dict(dev=dev, fn=fn, bar_size=size,
                               class_rev=pci.read32(dev, fn, PCI_CLASS_REVISION))


def pattern(size, seed):
    """Bytes no two seeds share and no page of zeros or ones resembles."""
    out = bytearray()
    x = (seed * 2654435761 + 12345) & 0xFFFFFFFF
    while len(out) < size:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        out += (x >> 8).to_bytes(3, "little")
    return bytes(out[:size])


def wait_for(cond, timeout=5.0):
    """cond()'s first true value within timeout seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    return cond()


def dma_through(qt, edu, shm, src, dst, count):
    """The edu DMAs memory at shm -> device -> guest RAM at dst, then guest RAM at src -> device ->
    shm + 0x1000; True if both patterns arrive."""
    a, b = pattern(count, 5), pattern(count, 6)
    qt.write(shm, a)
    qt.write(dst, b"\0" * count)
    edu.to_device(shm, count)
    edu.to_ram(dst, count)
    from_shm = qt.read(dst, count) == a
    qt.write(src, b)
    edu.to_device(src, count)
    edu.to_ram(shm + 0x1000, count)
    return from_shm and qt.read(shm + 0x1000, count) == b
