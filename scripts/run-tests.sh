#!/usr/bin/env bash
# Runs the workspace tests and ends with one plain summary line over all
# test binaries ("N passed, N failed"), so the total is not buried among
# the per-binary lines (the last of which is the empty doc-test run).
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed;/) p += $(i-1)
        if ($(i) ~ /^failed;/) f += $(i-1)
    }
} END { print p + 0, f + 0 }' "$log")
echo
echo "tests: ${passed} passed, ${failed} failed"
if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
    echo "error: no test ran" >&2
    exit 1
fi
exit "$status"
