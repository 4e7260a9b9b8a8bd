#!/usr/bin/env bash
# Runs the workspace tests, the fuzz targets for a few seconds each
# (fuzz/), then the API tests (tests/api: the AWS CLI and boto3 against a
# real emberd), and ends with one plain summary line over all of them
# ("N passed, N failed"), so the total is not buried among the per-binary
# lines (the last of which is the empty doc-test run).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log=$(mktemp)
junit=$(mktemp --suffix=.xml)
trap 'rm -f "$log" "$junit"' EXIT
cargo test --release --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed;/) p += $(i-1)
        if ($(i) ~ /^failed;/) f += $(i-1)
    }
} END { print p + 0, f + 0 }' "$log")

# Fuzzing, bounded: each target (fuzz/) for FUZZ_TEST_SECONDS seconds;
# each target counts as one test, a crash fails the suite. The zip target
# needs ember-artifact, whose AWS SDK would be compiled a second time with
# the fuzzing flags (minutes of the suite's budget): `make fuzz` runs it.
fuzz_log=$(mktemp)
FUZZ_SECONDS=${FUZZ_TEST_SECONDS:-6} FUZZ_CARGO_FLAGS=--no-default-features \
    "$root/scripts/fuzz.sh" frame dockerfile oci_layer sigv4 token 2>&1 | tee "$fuzz_log"
fuzz_status=${PIPESTATUS[0]}
fuzz_passed=$(grep -c '^fuzz [a-z_0-9]*: ok' "$fuzz_log" || true)
fuzz_failed=$(grep -c '^fuzz [a-z_0-9]*: FAILED' "$fuzz_log" || true)
if [ "$fuzz_status" -ne 0 ] && [ "$fuzz_failed" -eq 0 ]; then
    fuzz_failed=1 # the build failed
fi
rm -f "$fuzz_log"
passed=$((passed + fuzz_passed))
failed=$((failed + fuzz_failed))
[ "$status" -ne 0 ] || status=$fuzz_status

# API tests: pytest's own counts come from its JUnit report (errors in
# fixtures count as failures: a test that could not run did not pass).
py_passed=0
py_failed=0
if "$root/scripts/setup-venv.sh"; then
    (cd "$root" && build/venv/bin/python -m pytest -q -rfE --durations=25 -p no:cacheprovider \
        --junitxml="$junit" tests/api)
    py_status=$?
    read -r py_passed py_failed < <("$root/build/venv/bin/python" - "$junit" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 1)
    raise SystemExit
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(total - failed - skipped, failed)
PY
)
else
    echo "error: could not set up the test venv (scripts/setup-venv.sh)" >&2
    py_status=1
    py_failed=1
fi
[ "$py_status" -eq 0 ] || [ "$status" -ne 0 ] || status=$py_status

echo
echo "tests: $((passed + py_passed)) passed, $((failed + py_failed)) failed"
if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
    echo "error: no test ran" >&2
    exit 1
fi
exit "$status"
