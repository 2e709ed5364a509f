#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vfio-brokerctl against the running daemon (sim): human tables, --json parsed back and checked
field by field, monitor's JSON lines, and the exit codes scripts rely on."""

import json
import os
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
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


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

print("1..%d" % n)
sys.exit(1 if failed else 0)
