#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vfio-brokerctl against the running daemon (sim): human tables, --json parsed back and checked
field by field, monitor's JSON lines, and the exit codes scripts rely on."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ctl, mini_vmm = sys.argv[1], sys.argv[2]
agent = sys.argv[3] if len(sys.argv) > 3 else None
n = 0
failed = 0


def check(ok, what, detail=""):
    global n, failed
    n += 1
    print("%s %d - %s" % ("ok" if ok else "not ok", n, what))
    if not ok:
        failed += 1
        for line in str(detail).splitlines():
            print("#   " + line)


def run(*args, user=None):
    cmd = [ctl] + list(args)
    if user:
        cmd = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + cmd
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        return -1, "", "(still running after %d s)" % e.timeout
    return p.returncode, p.stdout, p.stderr


def parse(out):
    """JSON output, or None when it is not JSON (a check then fails instead of the whole test)."""
    try:
        return json.loads(out)
    except ValueError:
        return None


rc, out, err = run("--json", "status")
status = json.loads(out)
check(rc == 0 and status == {"version": status["version"], "backend": "sim", "balloon_inhibited": False,
                             "balloon_inhibitors": 0, "groups": 6, "containers": 0}, "status --json", out + err)
rc, out, _ = run("status")
check(rc == 0 and "Backend:            sim" in out and "Balloon inhibited:  no" in out, "status (human)", out)

rc, out, _ = run("--json", "groups")
groups = json.loads(out)
check(rc == 0 and [g["id"] for g in groups] == [1, 2, 3, 4, 5, 6] and
      groups[4]["devices"] == ["0000:00:05.0", "0000:00:05.1"] and groups[5]["viable"] is False and
      all(g["container"] is None for g in groups), "groups --json", out)
rc, out, _ = run("groups")
lines = out.splitlines()
check(rc == 0 and lines[0].split() == ["GROUP", "DEVICES", "VIABLE", "CONTAINER"] and len(lines) == 7 and
      lines[5].split() == ["5", "0000:00:05.0,0000:00:05.1", "yes", "-"] and
      len(set(len(l) - len(l.lstrip()) for l in lines)) == 1, "groups (human, aligned table)", out)

rc, out, _ = run("--json", "list")
check(rc == 0 and json.loads(out) == [], "list --json with no containers", out)

# Options work after the command too; words and options a command does not take are usage errors, refused
# before anything is printed.
for args in (["list", "--json"], ["list", "-j"], ["--json", "list"]):
    rc, out, err = run(*args)
    check(rc == 0 and parse(out) == [], "JSON output with %s" % " ".join(args), out + err)
rc, out, err = run("list", "--", "--json")
check(rc == 2 and out == "" and 'list takes no arguments, got "--json"' in err,
      "a word after -- is an argument, not an option", out + err)
rc, out, _ = run("status", "-j")
check(rc == 0 and (parse(out) or {}).get("backend") == "sim", "status -j", out)
for args, words in ((["status", "extra"], ['status takes no arguments', '"extra"']),
                    (["groups", "1"], ['groups takes no arguments', '"1"']),
                    (["monitor", "now"], ['monitor takes no arguments', '"now"']),
                    (["show", "1", "2"], ['show takes one container id or object path, got 2 arguments']),
                    (["close", "1", "2"], ['close takes one container id or object path, got 2 arguments']),
                    (["list", "--bogus"], ["unrecognized option '--bogus'", 'vfio-brokerctl help']),
                    (["status", "-x"], ["invalid option -- 'x'", 'vfio-brokerctl help']),
                    (["--json=yes", "status"], ["doesn't allow an argument", 'vfio-brokerctl help']),
                    ([], ["no command given", "Usage: vfio-brokerctl"])):
    rc, out, err = run(*args)
    check(rc == 2 and out == "" and all(w in err for w in words),
          "usage error (exit 2, nothing on stdout) for: %s" % (" ".join(args) or "(no arguments)"),
          "rc=%d\nstdout: %s\nstderr: %s" % (rc, out, err))
for args in (["help"], ["--help"], ["status", "--help"], ["-h"]):
    rc, out, err = run(*args)
    check(rc == 0 and out.startswith("Usage: vfio-brokerctl") and "  help " in out and
          "before or after the command" in out and err == "", "help: %s" % " ".join(args), out + err)
rc, out, err = run("help", "me")
check(rc == 2 and "help takes no arguments" in err, "help with an argument is a usage error", out + err)

# The completion offers what the tool accepts: the help command, options after the command too.
completion = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "completion",
                          "vfio-brokerctl")


def complete(*words):
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _vfio_brokerctl; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "-c", script, "complete", completion, "vfio-brokerctl"] + list(words),
                       capture_output=True, text=True, timeout=30)
    return sorted(p.stdout.split())


check(complete("he") == ["help"], "completion: the help command", complete("he"))
check(complete("list", "--j") == ["--json"], "completion: an option after the command", complete("list", "--j"))
check(complete("--json", "") == ["close", "groups", "help", "list", "monitor", "show", "status"],
      "completion: every command after an option", complete("--json", ""))

# Monitor in JSON while a VMM comes and goes.
mon = subprocess.Popen([ctl, "--json", "monitor"], stdout=subprocess.PIPE, text=True)
time.sleep(0.5)  # the monitor subscribes before the VMM starts; only its output is checked
tmp = tempfile.mkdtemp()
fifo = os.path.join(tmp, "hold")
os.mkfifo(fifo)
vmm = subprocess.Popen([mini_vmm, "--label=ctl-vm", "--group=3", "--ram-mib=8", "--hold=" + fifo],
                       stdout=subprocess.PIPE, text=True)
for line in vmm.stdout:
    if line.startswith("holding"):
        break

rc, out, _ = run("--json", "list")
lst = json.loads(out)
c = lst[0] if lst else {}
check(rc == 0 and len(lst) == 1 and c["label"] == "ctl-vm" and c["groups"] == [3] and c["mappings"] == 1 and
      c["mapped_bytes"] == 8 << 20 and c["balloon_inhibited"] is True and c["uid"] == os.getuid() and
      c["owner"].startswith(":") and c["page_sizes"] == 0x40201000 and
      c["iova_ranges"] == [{"first": 0, "last": 0xfedfffff}, {"first": 0xfef00000, "last": 0x7fffffffff}] and
      c["dma_available"] == 65534 and c["dirty_tracking"] is False and c["discardable"] == [],
      "list --json with the VMM's container, every field", out)
rc, out, _ = run("list")
check(rc == 0 and out.splitlines()[0].split() == ["ID", "OWNER", "UID", "LABEL", "GROUPS", "MAPPINGS", "BYTES"] and
      "ctl-vm" in out and "8.0 MiB" in out, "list (human)", out)
rc, out, _ = run("--json", "show", str(c.get("id")))
check(rc == 0 and json.loads(out) == c, "show ID --json equals the list entry", out)
rc, out, _ = run("show", c.get("path", "/"))
check(rc == 0 and "Label:             ctl-vm" in out and "Groups:            3" in out and
      "DMA available:     65534" in out and "Dirty tracking:    no" in out, "show PATH (human)", out)

rc, _, err = run("show", "424242")
check(rc == 4, "show of a missing container exits 4", err)
rc, _, err = run("frobnicate")
check(rc == 2, "an unknown command exits 2", err)
rc, _, err = run("show")
check(rc == 2, "show without an argument exits 2", err)
rc, _, err = run("close", str(c.get("id")), user=65534)
check(rc == 5 and "polkit" in err, "close by an unprivileged user exits 5 (not authorized)", err)

with open(fifo, "w") as f:
    f.write("go\n")
vmm.wait(timeout=30)
time.sleep(0.3)
mon.terminate()
events = [json.loads(l) for l in mon.communicate(timeout=10)[0].splitlines() if l.strip()]
kinds = [(e["event"], e.get("path", "").rsplit("/", 2)[-2]) for e in events]
inhibited = [e["changes"]["BalloonInhibited"] for e in events
             if e["event"] == "changed" and e["path"] == "/org/vfiobroker/Broker1" and "BalloonInhibited" in e["changes"]]
check(mon.returncode == 0 and ("added", "container") in kinds and ("removed", "container") in kinds and
      inhibited == [True, False], "monitor --json streams added/changed/removed and the balloon flips",
      "\n".join(json.dumps(e) for e in events))
ranges = [e["changes"]["IovaRanges"] for e in events
          if e["event"] == "changed" and "/container/" in e["path"] and "IovaRanges" in e["changes"]]
check(ranges and ranges[0] == [{"first": 0, "last": 0xfedfffff}, {"first": 0xfef00000, "last": 0x7fffffffff}] and
      ranges[-1] == [] and
      all(v is not None for e in events if e["event"] == "changed" for v in e["changes"].values()),
      "monitor --json shows IovaRanges (and every other change) with its value, never null",
      "\n".join(json.dumps(e) for e in events))

# Administrators close containers: root does, and the owner sees its container vanish.
vmm = subprocess.Popen([mini_vmm, "--label=to-close", "--group=3", "--ram-mib=8", "--hold=" + fifo],
                       stdout=subprocess.PIPE, text=True)
for line in vmm.stdout:
    if line.startswith("holding"):
        break
rc, out, _ = run("--json", "list")
cid = json.loads(out)[0]["id"]
rc, out, err = run("close", str(cid))
rc2, out2, _ = run("--json", "list")
check(rc == 0 and json.loads(out2) == [], "close ID by root removes the container", out + err)
with open(fifo, "w") as f:
    f.write("go\n")
vmm.wait(timeout=30)

# A VMM with hotpluggable memory (virtio-mem): its discardable region is shown, and a balloon agent
# following the container learns where it may reclaim.
vmm = subprocess.Popen([mini_vmm, "--label=hotplug", "--group=3", "--ram-mib=8", "--virtio-mem-mib=16",
                        "--hold=" + fifo], stdout=subprocess.PIPE, text=True)
for line in vmm.stdout:
    if line.startswith("holding"):
        break
rc, out, _ = run("--json", "list")
c = json.loads(out)[0] if rc == 0 and json.loads(out) else {}
check(c.get("discardable") == [{"first": 4 << 30, "last": (4 << 30) + (16 << 20) - 1, "granule": 2 << 20}] and
      c.get("mappings") == 1 + 3 and c.get("mapped_bytes") == (8 + 6) << 20,
      "list --json: the discardable region, 3 of its 8 granules populated", out)
rc, out, _ = run("show", str(c.get("id")))
check(rc == 0 and "Discardable:       [0x100000000, 0x100ffffff]/0x200000" in out, "show (human): the region", out)
if agent:
    a = subprocess.run(["timeout", "3", agent, "--container=" + c.get("path", "/")], capture_output=True, text=True)
    check("discardable %s [0x100000000, 0x100ffffff]/0x200000" % c.get("path") in a.stdout,
          "the balloon agent reports the container's discardable ranges", a.stdout + a.stderr)
with open(fifo, "w") as f:
    f.write("go\n")
vmm.wait(timeout=30)
check(vmm.returncode == 0, "the VMM unmaps its region and leaves")


# The manual: rendered without nested quotes, and its monitor example, run as printed, waits for the host's
# balloon state (not a container's) and ends once it has its line.
manpage = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "man", "vfio-brokerctl.1")
try:
    rendered = subprocess.run(["mandoc", "-T", "utf8", manpage], capture_output=True, text=True, timeout=30)
    text = re.sub(".\b", "", rendered.stdout)  # what a terminal shows: overstrike (bold, underline) removed
    lint = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", manpage], capture_output=True, text=True)
except FileNotFoundError as e:
    text, lint = "", None
    check(False, "mandoc is needed to render the manual (apt-get install mandoc)", e)
flat = " ".join(text.split())
check("event (\u201cadded\u201d, \u201cremoved\u201d or \u201cchanged\u201d)" in flat and "\u201d\u201d" not in flat,
      "vfio-brokerctl(1) renders the monitor's event names with balanced quotes", flat)
check(lint is not None and lint.returncode == 0 and lint.stdout + lint.stderr == "",
      "mandoc -T lint -W warning is clean", lint and lint.stdout + lint.stderr)

lines = text.splitlines()
start = next((i for i, l in enumerate(lines) if l.strip().startswith("$ vfio-brokerctl --json monitor")), None)
example = ""
if start is not None:
    example = lines[start].strip()[2:]
    for l in lines[start + 1:]:
        if not l.strip():
            break
        example += " " + l.strip()
check(example.isascii() and "grep" in example, "the monitor example is an ASCII shell pipeline", example)

fifo_a, fifo_b = os.path.join(tmp, "hold-a"), os.path.join(tmp, "hold-b")
os.mkfifo(fifo_a)
os.mkfifo(fifo_b)
vmms = {}
for name, group, f in (("a", 3, fifo_a), ("b", 4, fifo_b)):
    vmms[name] = subprocess.Popen([mini_vmm, "--label=man-" + name, "--group=%d" % group, "--ram-mib=8",
                                   "--hold=" + f], stdout=subprocess.PIPE, text=True)
    for line in vmms[name].stdout:
        if line.startswith("holding"):
            break
env = dict(os.environ, PATH=os.path.dirname(os.path.abspath(ctl)) + ":" + os.environ["PATH"])
pipeline = subprocess.Popen(["bash", "-c", example], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
time.sleep(1)  # the monitor subscribes; a late subscription makes this test fail, never pass

# B detaches: its container's BalloonInhibited turns false, the host's stays true (A holds a group).
with open(fifo_b, "w") as f:
    f.write("go\n")
for line in vmms["b"].stdout:
    if line.startswith("closed the device fd and detached"):
        break
time.sleep(0.5)
check(pipeline.poll() is None, "the example does not stop at a container's BalloonInhibited=false")

with open(fifo_a, "w") as f:
    f.write("go\n")
try:
    out, err = pipeline.communicate(timeout=30)
except subprocess.TimeoutExpired:
    pipeline.kill()
    out, err = pipeline.communicate()
    err += "\n(still running 30 s after the host's BalloonInhibited turned false)"
match = json.loads(out) if out.strip().startswith("{") else {}
check(pipeline.returncode == 0 and match.get("path") == "/org/vfiobroker/Broker1" and
      match.get("changes", {}).get("BalloonInhibited") is False,
      "the example ends with the host's BalloonInhibited=false line: " + example,
      "rc=%s\nstdout: %s\nstderr: %s" % (pipeline.returncode, out, err))
for v in vmms.values():
    v.wait(timeout=30)
# Nothing happens on the bus here: the monitor must notice on its own that its reader is gone.
p = subprocess.Popen(["bash", "-c", '"$0" --json monitor | true', ctl], start_new_session=True)
try:
    p.wait(timeout=10)
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
check(p.returncode == 0, "monitor exits when the program reading its output exits", p.returncode)

# Without a broker on the bus: say so, and how to start it, instead of the bus's raw error.
control = os.environ.get("VFIO_BROKER_HARNESS")



# run: a `vfio-brokerctl run` that dies (SIGKILL, nothing forwarded) takes its VMM along: the container it
# held closes with its bus connection, and a VMM left with a device without mappings would only fail.
def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def labels():
    rc, out, _ = run("--json", "list")
    doc = parse(out) or {}
    items = doc.get("containers", []) if isinstance(doc, dict) else doc
    return [c.get("label") for c in items]


run_dir = tempfile.mkdtemp(prefix="ctl-run-")
runner = subprocess.Popen([ctl, "run", "--device", groups[0]["devices"][0], "--socket",
                           os.path.join(run_dir, "dev.sock"), "--label", "killed-run", "--", "sleep", "600"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
vmm_pid = None
for _ in range(200):
    try:
        with open("/proc/%d/task/%d/children" % (runner.pid, runner.pid)) as f:
            kids = [int(x) for x in f.read().split()]
    except FileNotFoundError:
        kids = []
    if kids and "killed-run" in labels():
        vmm_pid = kids[0]
        break
    time.sleep(0.05)
check(vmm_pid is not None, "run holds a container for its VMM", runner.stderr.read() if runner.poll() is not None else "")
runner.kill()
runner.wait(timeout=10)
for _ in range(100):
    if vmm_pid is None or not alive(vmm_pid):
        break
    time.sleep(0.05)
check(vmm_pid is not None and not alive(vmm_pid), "a run killed with SIGKILL takes its VMM along (pid %s)" % vmm_pid)
for _ in range(100):
    if "killed-run" not in labels():
        break
    time.sleep(0.05)
check("killed-run" not in labels(), "and its container closes", labels())
if vmm_pid is not None and alive(vmm_pid):
    os.kill(vmm_pid, signal.SIGKILL)

def harness(cmd):
    with open(os.path.join(control, "cmd"), "w") as f:
        f.write(cmd + "\n")
    with open(os.path.join(control, "ack")) as f:
        return f.read().strip()


if control:
    answer = harness("term")
    for args in (["status"], ["--json", "list"], ["show", "1"]):
        rc, out, err = run(*args)
        check(rc == 3 and "vfio-brokerd is not running" in err and "systemctl start vfio-brokerd" in err and
              "org.freedesktop.DBus.Error" not in err and out == "",
              "without a broker, %s says it is not running and how to start it (exit 3)" % " ".join(args),
              "%s\nrc=%d\n%s" % (answer, rc, err))
    # monitor follows a broker that starts later, and says why nothing comes until then.
    mon = subprocess.Popen([ctl, "--json", "monitor"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = mon.stderr.readline()
    check("vfio-brokerd is not running; waiting for it" in line and "systemctl start vfio-brokerd" in line,
          "monitor without a broker says it waits for it", line)
    answer = harness("start")
    check(answer.startswith("started"), "the broker starts again", answer)
    vmm = subprocess.Popen([mini_vmm, "--label=after-start", "--group=3", "--ram-mib=8"], stdout=subprocess.DEVNULL)
    vmm.wait(timeout=30)
    time.sleep(0.3)
    mon.terminate()
    out, err = mon.communicate(timeout=10)
    events = [parse(l) or {} for l in out.splitlines()]
    check(mon.returncode == 0 and any(e.get("event") == "added" for e in events),
          "monitor started before the broker shows its changes once it runs", out + err)
else:
    check(False, "VFIO_BROKER_HARNESS is set by the harness", "")

p = subprocess.run([ctl, "status"], capture_output=True, text=True, timeout=30,
                   env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS="unix:path=" + os.path.join(tmp, "no-bus")))
check(p.returncode == 3 and "cannot connect to the system bus (unix:path=" in p.stderr,
      "without a bus: exit 3, naming the address it tried", p.stderr)

print("1..%d" % n)
sys.exit(1 if failed else 0)
