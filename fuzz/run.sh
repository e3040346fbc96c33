#!/usr/bin/env bash
# `make fuzz`: runs each fuzz target for FUZZ_S seconds (default 60), one
# after the other, and prints its executions and coverage. Needs the nightly
# toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Usage: fuzz/run.sh [TARGET...]   (default: every target in fuzz/Cargo.toml)
# Environment: FUZZ_S (seconds per target), FUZZ_ARGS (extra libFuzzer flags).
# The growing corpus is kept in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>), a crash in fuzz/artifacts/<target>, logs in fuzz/logs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_S:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "make fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "make fuzz needs cargo-fuzz: cargo install cargo-fuzz" >&2
    exit 1
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# No sanitizer: the crate forbids unsafe code, and ASan would halve the rate.
# Debug assertions on, so an arithmetic overflow is a crash.
build_flags=(-s none -a -O)
cargo +nightly fuzz build "${build_flags[@]}"
mkdir -p logs
printf '%-10s %12s %8s %8s %8s  %s\n' target execs cov ft seconds result
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="logs/$target.log"
    result=ok
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    cargo +nightly fuzz run "${build_flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -dict="dict/$target.dict" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=1024 -malloc_limit_mb=512 -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$log" 2>&1 || { result="FAILED (see fuzz/$log)"; status=1; }
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    printf '%-10s %12s %8s %8s %8s  %s\n' "$target" "${execs:--}" "${cov:--}" "${ft:--}" \
        "${took:--}" "$result"
done
exit $status
