#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vfio-brokerd --check-config as an administrator runs it before restarting the service: what it says
# for a good file, for syntax errors (line and column), for a key given twice, and when there is no file
# at all (the defaults apply: it names the file it looked for instead of saying "OK").
#   test-check-config.sh VFIO_BROKERD EXAMPLE_CONFIG
set -u
daemon=$1
example=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
failed=0

# check DESCRIPTION EXPECTED_STATUS TEXT... -- COMMAND...: the command's status, and each TEXT in its output.
check() {
        local what=$1 want=$2 status out texts=()
        shift 2
        while [ "$1" != -- ]; do texts+=("$1"); shift; done
        shift
        out=$("$@" 2>&1)
        status=$?
        n=$((n + 1))
        local ok=1
        [ "$status" -eq "$want" ] || ok=0
        for t in "${texts[@]}"; do
                [[ $out == *"$t"* ]] || ok=0
        done
        if [ $ok -eq 1 ]; then
                echo "ok $n - $what"
        else
                echo "not ok $n - $what"
                echo "#   exit status $status (expected $want), output:"
                sed 's/^/#   /' <<< "$out"
                echo "#   expected to contain: ${texts[*]}"
                failed=$((failed + 1))
        fi
}

check "a valid file is OK" 0 "$example: OK" -- "$daemon" --check-config="$example"

printf '{\n  "limits": {\n    "default": { "containers": 2, }\n  }\n}\n' > "$tmp/comma.json"
check "a trailing comma: line, column and why" 1 \
        "$tmp/comma.json: not valid JSON at line 3, column 35: a comma before '}' (JSON has no trailing commas)" -- \
        "$daemon" --check-config="$tmp/comma.json"

printf '{\n  "limits": {\n    "default": { "containers": 2 }\n' > "$tmp/short.json"
check "a file that ends early: where, not \"continue (at byte N)\"" 1 \
        "$tmp/short.json: not valid JSON: the text ends at line 4, column 1" -- \
        "$daemon" --check-config="$tmp/short.json"

printf '{\n  "limits": {\n    "default": { "pinned_bytes": "0x40000000",\n                 "pinned_bytes": "unlimited" }\n  }\n}\n' > "$tmp/twice.json"
check "a key given twice is refused, naming it and both places" 1 \
        "$tmp/twice.json: limits.default: key \"pinned_bytes\" is given twice, at line 3, column 18 and at line 4, column 18" -- \
        "$daemon" --check-config="$tmp/twice.json"

check "a file named on the command line must exist" 1 "$tmp/none.json: cannot open" -- \
        "$daemon" --check-config="$tmp/none.json"

# No file at the default path. The path is built in; --help shows it. Where the host has one, hide it in
# a private mount namespace (as root, which CI is).
default=$("$daemon" --help | sed -n 's/.*--config=PATH.*(default \(.*\))$/\1/p')
n=$((n + 1))
if [ -z "$default" ]; then
        echo "not ok $n - --help names the default configuration file"
        failed=$((failed + 1))
else
        echo "ok $n - --help names the default configuration file ($default)"
fi
run_without_default() {
        if [ -e "$default" ]; then
                unshare --mount --propagation private sh -c \
                        'mount -t tmpfs tmpfs "$(dirname "$1")" && exec "$0" --check-config' "$daemon" "$default"
        else
                "$daemon" --check-config
        fi
}
if [ -e "$default" ] && [ "$(id -u)" -ne 0 ]; then
        n=$((n + 1))
        echo "ok $n # SKIP $default exists on this host; hiding it needs root"
else
        check "no file: it says the defaults apply and which file it looked for" 0 \
                "$default: no such file; the built-in defaults apply" -- run_without_default
        out=$(run_without_default 2>&1)
        n=$((n + 1))
        if [[ $out == *OK* ]]; then
                echo "not ok $n - no file is not \"OK\""
                failed=$((failed + 1))
        else
                echo "ok $n - no file is not \"OK\""
        fi
fi

echo "1..$n"
[ $failed -eq 0 ]
