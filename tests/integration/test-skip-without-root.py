#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The integration harness run without root skips with its reason, and starts nothing (issue 15: it
failed with "vfio-brokerd did not become ready"). As root (CI) it runs the harness as nobody (uid 65534)
through setpriv; run without root, it runs it as the current user.

  test-skip-without-root.py HARNESS DAEMON POLICY"""

import os
import subprocess
import sys
import tempfile

harness, daemon, policy = sys.argv[1:4]
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


tmp = tempfile.mkdtemp(prefix="vfio-broker-skip-")
os.chmod(tmp, 0o1777)
marker = os.path.join(tmp, "ran")
prefix = []
if os.geteuid() == 0:
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
uid = 65534 if prefix else os.geteuid()

for tap in (False, True):
    cmd = prefix + [sys.executable, os.path.abspath(harness), "--daemon", os.path.abspath(daemon),
                    "--policy", os.path.abspath(policy)] + (["--tap"] if tap else []) + ["--", "touch", marker]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=tmp)
    reason = "needs root (running as uid %d)" % uid
    if tap:
        check(p.returncode == 0 and p.stdout.startswith("1..0 # SKIP " + reason) and "org.vfiobroker.Broker1" in p.stdout,
              "TAP: an empty plan that skips, with the reason, exit status 0",
              "exit status %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout, p.stderr))
    else:
        check(p.returncode == 77 and p.stdout.startswith("SKIP: " + reason) and "org.vfiobroker.Broker1" in p.stdout,
              "exit status 77 (skipped) with the reason",
              "exit status %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout, p.stderr))
    check(not os.path.exists(marker) and "did not become ready" not in p.stdout + p.stderr,
          "nothing was started (%s)" % ("TAP" if tap else "exit status"), p.stdout + p.stderr)

os.rmdir(tmp) if not os.listdir(tmp) else subprocess.call(["rm", "-rf", tmp])
print("1..%d" % n)
sys.exit(1 if failed else 0)
