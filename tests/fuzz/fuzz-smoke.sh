#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A bounded libFuzzer run of every target, built with clang (-fsanitize=fuzzer,address,undefined),
# starting from the committed corpus. New inputs go to a scratch directory, not into the tree.
#   fuzz-smoke.sh SRCDIR BUILDDIR [SECONDS]
set -u
src=$1
build=$2
seconds=${3:-20}
out=$build/fuzz
mkdir -p "$out"
command -v clang >/dev/null || { echo "Bail out! clang is missing (apt-get install clang libclang-rt-14-dev)"; exit 1; }

common=(-std=gnu11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -I"$src/common" -I"$src/daemon" -I"$build")
daemon=$(ls "$src"/daemon/*.c "$src"/common/*.c | grep -v '/main.c$')
n=0
failed=0
for target in config request state vfio-user peer-frame; do
        n=$((n + 1))
        if [ $target = config ]; then
                sources=("$src/daemon/config.c" "$src/daemon/json-strict.c" "$src/daemon/backend.c" "$src/daemon/error.c" "$src/common/broker-wire.c")
                libs=($(pkg-config --libs json-c))
        elif [ $target = peer-frame ]; then
                sources=("$src/daemon/peer-frame.c")
                libs=()
        else
                sources=($daemon)
                libs=($(pkg-config --libs json-c libsystemd zlib))
        fi
        if ! clang "${common[@]}" $(pkg-config --cflags json-c libsystemd) -o "$out/fuzz-$target" \
                "$src/tests/fuzz/fuzz-$target.c" "${sources[@]}" "${libs[@]}" > "$out/build-$target.log" 2>&1; then
                echo "not ok $n - fuzz-$target builds with clang/libFuzzer"
                sed 's/^/#   /' "$out/build-$target.log" | tail -n 20
                failed=$((failed + 1))
                continue
        fi
        rm -rf "$out/corpus-$target"
        mkdir -p "$out/corpus-$target"
        if "$out/fuzz-$target" -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
                "$out/corpus-$target" "$src/tests/fuzz/corpus/$target" > "$out/run-$target.log" 2>&1; then
                runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/run-$target.log")
                echo "ok $n - fuzz-$target: ${seconds}s, ${runs:-?} inputs, no crash"
        else
                echo "not ok $n - fuzz-$target crashed"
                tail -n 40 "$out/run-$target.log" | sed 's/^/#   /'
                failed=$((failed + 1))
        fi
done
echo "1..$n"
[ $failed -eq 0 ]
