#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Runs a test against the real daemon on a private, system-like dbus-daemon.

The bus is configured like Debian's system bus (default deny for method calls and name ownership)
plus the project's own policy file, so the test exercises the policy that is installed. The daemon
runs as root on the chosen backend and is waited for through sd_notify READY=1 on a NOTIFY_SOCKET we
own, never with sleeps. After the test the daemon gets SIGTERM and must exit 0 within 10 s, without
any sanitizer report.

  harness.py --daemon PATH --policy PATH [--backend sim] [--config JSON] [--polkit DIR] [--tap] -- CMD ARGS...

The test command gets DBUS_SYSTEM_BUS_ADDRESS and VFIO_BROKER_DAEMON_PID in its environment.

Without root the test is skipped with the reason, before anything starts: exit status 77 (meson's and
automake's "skipped"), or for a TAP test (--tap) the plan "1..0 # SKIP reason" and exit status 0, since
meson counts any other exit status of a TAP test as an error.
"""

import argparse
import array
import ctypes
import fcntl
import threading
import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

BUS_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "system-bus.conf.in")


def log(msg):
    print("# harness: " + msg, flush=True)


POLKIT_BUS_POLICY = """<include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>
  <policy user="root"><allow own="org.freedesktop.PolicyKit1"/></policy>
  <policy context="default"><allow send_destination="org.freedesktop.PolicyKit1"/></policy>"""


def start_bus(tmp, policy, polkit=False):
    sock = os.path.join(tmp, "system_bus_socket")
    conf = os.path.join(tmp, "bus.conf")
    with open(BUS_CONF) as f:
        text = f.read().replace("@SOCKET@", sock).replace("@POLICY@", os.path.abspath(policy))
        if polkit:
            text = text.replace("<!-- @EXTRA@ -->", POLKIT_BUS_POLICY)
    with open(conf, "w") as f:
        f.write(text)
    r, w = os.pipe()
    bus = subprocess.Popen(["dbus-daemon", "--nofork", "--config-file=" + conf, "--print-address=%d" % w],
                           pass_fds=(w,), stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        address = f.readline().strip()  # blocks until the bus listens
    if not address:
        raise RuntimeError("dbus-daemon did not print its address")
    return bus, address


def same_file(a, b):
    """Whether two fds are the same open file (systemd's same_fd(): kcmp(KCMP_FILE))."""
    sa, sb = os.fstat(a), os.fstat(b)
    if (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino):
        return False
    nr = {"x86_64": 312, "aarch64": 272, "riscv64": 272}.get(os.uname().machine)
    if nr is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        pid = os.getpid()
        r = libc.syscall(nr, pid, pid, 0, a, b)  # KCMP_FILE
        if r >= 0:
            return r == 0
    # systemd's fallback: same flags, and a change of one shows in the other.
    fa, fb = fcntl.fcntl(a, fcntl.F_GETFL), fcntl.fcntl(b, fcntl.F_GETFL)
    if fa != fb:
        return False
    fcntl.fcntl(a, fcntl.F_SETFL, fa ^ os.O_NONBLOCK)
    same = fcntl.fcntl(b, fcntl.F_GETFL) != fb
    fcntl.fcntl(a, fcntl.F_SETFL, fa)
    return same


class FdStore:
    """The NOTIFY_SOCKET side of systemd's fd store: keeps what the daemon stores (FDSTORE=1, FDNAME=),
    forgets what it removes (FDSTOREREMOVE=1), and hands everything back to the next instance with
    LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, as systemd does for a restarted service. Like systemd
    (service_add_fd_store()), it keeps one fd per open file ("Suppressing duplicate fd") and refuses
    fds beyond FileDescriptorStoreMax= (max) without telling the daemon.

    A test can arm a trap: the daemon is killed (SIGKILL) the moment its next FDSTOREREMOVE arrives,
    before the store acts on it -- the hostile timing of a crash in the middle of a save."""

    def __init__(self, tmp, max_fds=16384):
        self.path = os.path.join(tmp, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.fds = []  # (name, fd)
        self.by_inode = {}  # (dev, ino) -> [fd]
        self.max = max_fds
        self.refused = 0
        self.suppressed = 0
        self.pushed = 0
        self.kill_at_remove = None  # a Popen to kill at the next FDSTOREREMOVE
        self.synced = threading.Condition()
        self.sync_seen = 0
        self.ready = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self.loop, daemon=True).start()

    def add(self, name, fd):
        # systemd compares with every stored fd (kcmp); only those of the same inode can match, and
        # looking at those alone keeps the stand-in from being the bottleneck of the benchmarks.
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        for kept in self.by_inode.get(key, []):
            if same_file(kept, fd):
                self.suppressed += 1
                log("fd store: suppressing duplicate fd %s" % name)
                return False
        if len(self.fds) >= self.max:
            self.refused += 1
            log("fd store: FileDescriptorStoreMax=%d reached, refusing fd %s" % (self.max, name))
            return False
        self.fds.append((name, fd))
        self.by_inode.setdefault(key, []).append(fd)
        self.pushed += 1
        return True

    def forget(self, fd):
        st = os.fstat(fd)
        self.by_inode[(st.st_dev, st.st_ino)].remove(fd)
        os.close(fd)

    def loop(self):
        while True:
            try:
                msg, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
            except OSError:
                return
            fds = []
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(data[:len(data) - len(data) % a.itemsize])
                    fds.extend(a)
            fields = dict(l.split("=", 1) for l in msg.decode(errors="replace").split("\n") if "=" in l)
            if "HARNESS_SYNC" in fields:
                with self.synced:
                    self.sync_seen = int(fields["HARNESS_SYNC"])
                    self.synced.notify_all()
                continue
            with self.lock:
                if fields.get("FDSTORE") == "1":
                    fds = [fd for fd in fds if not self.add(fields.get("FDNAME", "stored"), fd)]
                elif fields.get("FDSTOREREMOVE") == "1":
                    if self.kill_at_remove is not None:
                        # Killed before the removal: what the daemon did before this point is all
                        # the next instance finds (the removal itself came after the kill, and goes).
                        self.kill_at_remove.kill()
                        self.kill_at_remove = None
                    keep = []
                    for name, fd in self.fds:
                        if name == fields.get("FDNAME"):
                            self.forget(fd)
                        else:
                            keep.append((name, fd))
                    self.fds = keep
                if fields.get("READY") == "1":
                    self.ready.set()
            for fd in fds:
                os.close(fd)

    def sync(self):
        """Waits until every message sent so far is handled. systemd handles what is queued on the notify
        socket before it acts on the death of the service (the notify source has the higher priority),
        so a new instance never sees fds the old one removed."""
        n = self.sync_seen + 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"HARNESS_SYNC=%d" % n, self.path)
        with self.synced:
            if not self.synced.wait_for(lambda: self.sync_seen >= n, timeout=30):
                raise RuntimeError("the fd store did not catch up")

    def names(self):
        with self.lock:
            return [n for n, _ in self.fds]


# The daemon's state log (daemon/state-log.h): a 4096-byte header (magic, version, record size,
# generation, capacity, committed count at offset 32), then 64-byte records {u32 type, u32 CRC-32C
# (version 2; CRC-32 in version 1) of the record with crc 0, u64 container, 48 bytes}. The tests damage it, or append valid records that name
# what does not exist, as a stand-in for a broken or mismatched state.
LOG_HEADER, LOG_RECORD, LOG_COMMITTED = 4096, 64, 32


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def log_record(kind, container, payload, version=2):
    rec = struct.pack("<IIQ", kind, 0, container) + payload.ljust(48, b"\0")
    crc = zlib.crc32(rec) if version == 1 else crc32c(rec)
    return rec[:4] + struct.pack("<I", crc) + rec[8:]


def edit_log(store, cmd):
    store.sync()
    with store.lock:
        logs = [(n, fd) for n, fd in store.fds if n.startswith("state-")]
        if not logs:
            return "no state log"
        name, fd = max(logs, key=lambda x: int(x[0][6:]))
        if cmd == "log-drop":
            store.fds = [(n, f) for n, f in store.fds if n != name]
            store.forget(fd)
            return "dropped " + name
        committed = struct.unpack("<Q", os.pread(fd, 8, LOG_COMMITTED))[0]
        version = struct.unpack("<I", os.pread(fd, 4, 8))[0]
        if cmd == "log-corrupt":
            off = LOG_HEADER + (committed - 1) * LOG_RECORD + 20
            os.pwrite(fd, bytes([os.pread(fd, 1, off)[0] ^ 0x40]), off)
            return "corrupted"
        args = cmd.split(":")
        records = []
        if args[0] == "log-head":
            cid = int(args[1])
            text = json.dumps({"version": 1, "backend": args[2], "id": cid, "owner": ":1.1", "uid": 0,
                               "label": "x", "groups": []}, separators=(",", ":")).encode()
            records.append(log_record(1, cid, struct.pack("<Q", len(text)) + text[:40], version))
            for off in range(40, len(text), 48):
                records.append(log_record(2, cid, text[off:off + 48], version))
        elif args[0] == "log-map":
            cid, iova, size, region, offset, flags = (int(x, 0) for x in args[1:7])
            records.append(log_record(5, cid, struct.pack("<QQQII", iova, size, offset, region, flags), version))
        else:
            return "unknown"
        os.pwrite(fd, b"".join(records), LOG_HEADER + committed * LOG_RECORD)
        os.pwrite(fd, struct.pack("<Q", committed + len(records)), LOG_COMMITTED)
        return "appended %d" % len(records)


def state_dir(tmp):
    """Like /run in production, the state lives on tmpfs (/dev/shm) when there is one."""
    shm = "/dev/shm/" + os.path.basename(tmp)
    if os.path.isdir("/dev/shm") and not os.path.exists(shm):
        try:
            os.mkdir(shm, 0o700)
        except OSError:
            return os.path.join(tmp, "state")
    return shm if os.path.isdir(shm) else os.path.join(tmp, "state")


def start_daemon(tmp, daemon, backend, config, env, store, fdstore=True):
    env = dict(env, NOTIFY_SOCKET=store.path)
    args = [daemon, "--backend=" + backend, "--state-dir=" + state_dir(tmp), "--fdstore-max=%d" % store.max]
    if not fdstore:
        # No persistence: the daemon stores nothing when it has no state directory.
        args = [daemon, "--backend=" + backend, "--state-dir="]
    if config:
        args.append("--config=" + config)
    store.sync()
    with store.lock:
        stored = list(store.fds)
    if stored:
        env["LISTEN_FDS"] = str(len(stored))
        env["LISTEN_FDNAMES"] = ":".join(n for n, _ in stored)

    def move_fds():
        # Stored fds become 3, 4, ... in the child (via free numbers above the targets), the rest closes.
        tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(stored)) for _, fd in stored]
        for i, fd in enumerate(tmp):
            os.dup2(fd, 3 + i)
        os.closerange(3 + len(stored), 4096)

    store.ready.clear()
    log("starting " + " ".join(args) + (" with %d stored fds" % len(stored) if stored else ""))
    # LISTEN_PID must be the daemon's pid: let a shell set it and exec the daemon in place.
    proc = subprocess.Popen(["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"'] + args, env=env,
                            preexec_fn=move_fds, close_fds=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not store.ready.wait(0.05):
        if proc.poll() is not None:
            break
    if not store.ready.is_set():
        proc.kill()
        raise RuntimeError("vfio-brokerd did not become ready (exit status %s)" % proc.poll())
    return proc


class Control:
    """Lets a test kill, stop and restart the daemon: it writes a command line to $VFIO_BROKER_HARNESS/cmd
    and reads the answer from $VFIO_BROKER_HARNESS/ack.
      kill9   SIGKILL the daemon (its fds stay in the store)
      term    SIGTERM, and wait for its exit status (0 expected)
      start   start a new instance with the stored fds
      fds     list the names in the store
      trap-remove  SIGKILL the daemon when its next FDSTOREREMOVE arrives (answers at once)
      store   "fds=N suppressed=S refused=R pushed=P": what the store holds, what it dropped, and how
              many fds it took in all
      log-corrupt                 damage the last committed record of the stored state log
      log-head:<id>:<backend>     append (and commit) a valid head for container id on another backend
      log-map:<id>:<iova>:<size>:<region>:<offset>:<flags>
                                  append (and commit) a valid mapping record
      log-drop                    remove the state log from the store"""

    def __init__(self, tmp, run):
        self.dir = os.path.join(tmp, "control")
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o755)
        os.mkfifo(os.path.join(self.dir, "cmd"))
        os.mkfifo(os.path.join(self.dir, "ack"))
        self.run = run
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            with open(os.path.join(self.dir, "cmd")) as f:
                lines = f.read().split()
            for cmd in lines:
                try:
                    answer = self.run(cmd)
                except Exception as e:  # reported to the test, which fails
                    answer = "error " + str(e)
                with open(os.path.join(self.dir, "ack"), "w") as f:
                    f.write(answer + "\n")


def start_polkitd(tmp, actions, rules, env):
    """The real polkitd on the private bus, in a private mount namespace where the project's .policy
    and the test's rules are all it sees. It drops to the polkitd user itself."""
    dirs = {}
    for name, files in (("actions", actions), ("rules", rules), ("empty", [])):
        d = os.path.join(tmp, "polkit-" + name)
        os.mkdir(d)
        os.chmod(d, 0o755)
        for f in files:
            with open(f) as src, open(os.path.join(d, os.path.basename(f)), "w") as dst:
                dst.write(src.read())
            os.chmod(os.path.join(d, os.path.basename(f)), 0o644)
        dirs[name] = d
    script = ("mount --bind {actions} /usr/share/polkit-1/actions && "
              "mount --bind {rules} /etc/polkit-1/rules.d && "
              "mount --bind {empty} /usr/share/polkit-1/rules.d && "
              "exec /usr/lib/polkit-1/polkitd --no-debug").format(**dirs)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env)
    wait_for_name(env, "org.freedesktop.PolicyKit1", proc)
    return proc


def start_polkit_mock(env):
    """python3-dbusmock's polkitd template: answers as told (SetAllowed), or hangs (SimulateHang)."""
    proc = subprocess.Popen(["/usr/bin/python3", "-m", "dbusmock", "--system", "--template", "polkitd"], env=env,
                            stdout=subprocess.DEVNULL)
    wait_for_name(env, "org.freedesktop.PolicyKit1", proc)
    return proc


def wait_for_name(env, name, proc):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = subprocess.run(["busctl", "--system", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                            "org.freedesktop.DBus", "NameHasOwner", "s", name], env=env, capture_output=True, text=True)
        if r.stdout.strip() == "b true":
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("%s did not appear on the bus" % name)


def sanitizer_reports(tmp):
    found = []
    for path in glob.glob(os.path.join(tmp, "sanitizer*")):
        with open(path, errors="replace") as f:
            text = f.read()
        if text.strip():
            found.append((path, text))
    return found


def skip(tap, reason):
    if tap:
        print("1..0 # SKIP " + reason, flush=True)
        return 0
    print("SKIP: " + reason, flush=True)
    return 77


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--backend", default="sim")
    ap.add_argument("--config")
    ap.add_argument("--config-json", help="configuration text, written to a temporary file")
    ap.add_argument("--polkitd", action="store_true", help="run the real polkitd with --polkit-policy/--polkit-rules")
    ap.add_argument("--polkit-policy", action="append", default=[])
    ap.add_argument("--polkit-rules", action="append", default=[])
    ap.add_argument("--polkit-mock", action="store_true", help="run python3-dbusmock's polkitd template")
    ap.add_argument("--fdstore-max", type=int, default=16384,
                    help="the stand-in fd store's FileDescriptorStoreMax= (also passed to the daemon)")
    ap.add_argument("--no-fdstore", action="store_true",
                    help="run the daemon without persistence (no state directory): for benchmarks")
    ap.add_argument("--tap", action="store_true", help="the test speaks TAP: skip with a TAP plan, not exit 77")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no test command")

    if os.geteuid() != 0:
        return skip(a.tap, "needs root (running as uid %d): the bus policy lets only root own "
                    "org.vfiobroker.Broker1, and polkitd is started in a private mount namespace" % os.geteuid())

    tmp = tempfile.mkdtemp(prefix="vfio-broker-test-")
    os.chmod(tmp, 0o1777)  # unprivileged test clients connect and write sanitizer logs here
    env = dict(os.environ)
    # Sanitizer reports of every process go to files we check afterwards.
    san = "log_path=%s/sanitizer:halt_on_error=1:abort_on_error=0" % tmp
    env["ASAN_OPTIONS"] = san + ":detect_leaks=1"
    env["UBSAN_OPTIONS"] = san + ":print_stacktrace=1"

    config = a.config
    if a.config_json:
        config = os.path.join(tmp, "config.json")
        with open(config, "w") as f:
            f.write(a.config_json)

    bus = daemon = polkit = None
    status = 1
    try:
        bus, address = start_bus(tmp, a.policy, polkit=a.polkitd or a.polkit_mock)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = address
        if a.polkitd:
            polkit = start_polkitd(tmp, a.polkit_policy, a.polkit_rules, env)
        elif a.polkit_mock:
            polkit = start_polkit_mock(env)
        if polkit:
            env["VFIO_BROKER_POLKIT_PID"] = str(polkit.pid)
        store = FdStore(tmp, a.fdstore_max)
        persist = not a.no_fdstore
        daemon = start_daemon(tmp, a.daemon, a.backend, config, env, store, persist)
        env["VFIO_BROKER_DAEMON_PID"] = str(daemon.pid)
        env["VFIO_BROKER_STATE_DIR"] = state_dir(tmp)
        env["VFIO_BROKER_PERSISTENCE"] = "on" if persist else "off"
        current = {"daemon": daemon}

        def control(cmd):
            d = current["daemon"]
            if cmd == "kill9":
                d.kill()
                d.wait()
                return "killed"
            if cmd == "term":
                d.send_signal(signal.SIGTERM)
                return "exited %d" % d.wait(timeout=30)
            if cmd == "start":
                current["daemon"] = start_daemon(tmp, a.daemon, a.backend, config, env, store, persist)
                return "started %d" % current["daemon"].pid
            if cmd == "fds":
                store.sync()
                return " ".join(store.names()) or "-"
            if cmd == "trap-remove":
                with store.lock:
                    store.kill_at_remove = d
                return "armed"
            if cmd.startswith("log-"):
                return edit_log(store, cmd)
            if cmd == "store":
                store.sync()
                with store.lock:
                    return "fds=%d suppressed=%d refused=%d pushed=%d" % (len(store.fds), store.suppressed,
                                                                           store.refused, store.pushed)
            return "unknown"

        env["VFIO_BROKER_HARNESS"] = Control(tmp, control).dir
        status = subprocess.call(cmd, env=env)
        daemon = current["daemon"]
        if daemon.poll() is not None:
            log("FAIL: the daemon died during the test (status %s)" % daemon.returncode)
            status = status or 1
        else:
            daemon.send_signal(signal.SIGTERM)
            try:
                rc = daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                rc = "hung"
            if rc != 0:
                log("FAIL: the daemon exited with %s on SIGTERM" % rc)
                status = status or 1
    finally:
        if daemon and daemon.poll() is None:
            daemon.kill()
        if polkit and polkit.poll() is None:
            polkit.terminate()
            polkit.wait()
        if bus:
            bus.terminate()
            bus.wait()
    for path, text in sanitizer_reports(tmp):
        log("FAIL: sanitizer report in %s:\n%s" % (path, text))
        status = status or 1
    subprocess.call(["rm", "-rf", tmp, "/dev/shm/" + os.path.basename(tmp)])
    return status


if __name__ == "__main__":
    sys.exit(main())
