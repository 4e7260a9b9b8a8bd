#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) with libFuzzer on stable Rust and runs
# each for FUZZ_SECONDS (default 8) seconds; exits non-zero on the first
# target that crashes, leaking, timing out or panicking, after printing
# the input that did it.
#
#   scripts/fuzz.sh                 # every target
#   FUZZ_SECONDS=600 scripts/fuzz.sh zip oci_layer
#
# Coverage comes from LLVM's SanitizerCoverage pass, which stable rustc
# takes with -C passes / -C llvm-args (no nightly, no cargo-fuzz). No
# AddressSanitizer: the crates are safe Rust, and a panic is the finding.
# Inputs the fuzzer finds interesting are kept in build/fuzz/corpus/TARGET,
# crashing inputs in build/fuzz/artifacts/TARGET; the committed seeds are
# fuzz/corpus/TARGET.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${FUZZ_SECONDS:-8}
all=(frame dockerfile zip oci_layer sigv4 token)
targets=("${@:-${all[@]}}")
triple=x86_64-unknown-linux-gnu
work=$root/build/fuzz
export CARGO_TARGET_DIR=$root/target/fuzz

# --target keeps the instrumentation off build scripts and proc macros,
# which the host toolchain loads without libFuzzer's runtime.
RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing" \
    cargo build --quiet --release --locked --manifest-path fuzz/Cargo.toml --target "$triple" \
    ${FUZZ_CARGO_FLAGS:-} --bins

# As root, each target runs in a mount namespace of its own where '/' is
# read-only: only its scratch tmpfs and build/fuzz are writable, so an
# unpacker that escapes its temp dir fails instead of writing the host.
sandbox() {
    if [[ $(id -u) -eq 0 ]] && command -v unshare >/dev/null; then
        unshare --mount --propagation private -- bash -c '
            set -e
            scratch=$(mktemp -d)
            mount -t tmpfs -o size=1g,mode=1777 fuzz-scratch "$scratch"
            mount --bind "$1" "$1"
            mount -o remount,bind,ro /
            shift
            TMPDIR=$scratch exec "$@"' sandbox "$work" "$@"
    else
        echo "fuzz: not root: running without the read-only sandbox" >&2
        "$@"
    fi
}

status=0
for target in "${targets[@]}"; do
    mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
    log=$work/$target.log
    started=$SECONDS
    if sandbox "$CARGO_TARGET_DIR/$triple/release/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$work/artifacts/$target/" \
        "$work/corpus/$target" "fuzz/corpus/$target" >"$log" 2>&1; then
        # libFuzzer's last status line: executions, coverage, corpus size.
        stats=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
        echo "fuzz $target: ok in $((SECONDS - started)) s: ${stats:-no stats}"
    else
        echo "fuzz $target: FAILED (log: $log); the input is in $work/artifacts/$target/:" >&2
        tail -n 40 "$log" >&2
        ls -l "$work/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
