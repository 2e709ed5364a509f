#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The logic reaches a backend only through the backend_*() wrappers in daemon/backend.h: outside
# daemon/backend*.[ch] nothing names BackendOps or dereferences a Backend's ops. Then an op can change
# (its name, its error contract) in one header instead of at every caller.
set -eu
src=${1:?usage: check-backend-api.sh SOURCE_ROOT}

bad=$(cd "$src" && grep -nE 'backend\)?->ops\b|\bBackendOps\b' daemon/*.c daemon/*.h client/*.c tests/*/*.c 2>/dev/null |
      grep -vE '^daemon/backend[^/]*:' || true)
if [ -n "$bad" ]; then
        echo "BackendOps used outside daemon/backend*.[ch]; call the backend_*() wrappers of backend.h instead:"
        echo "$bad"
        exit 1
fi
echo "ok: only daemon/backend*.[ch] use BackendOps"
