#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time each, one after the other.
#   fuzz/run.sh                      # every target, 60 s each
#   SECONDS_PER_TARGET=300 fuzz/run.sh slack_event slack_signature
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# New inputs go to fuzz/corpus/<target> (not committed); the committed seeds are read from
# fuzz/seeds/<target>. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -uo pipefail

cd "$(dirname "$0")"
seconds="${SECONDS_PER_TARGET:-60}"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
    echo "== $target (${seconds}s)"
    mkdir -p "corpus/$target" "seeds/$target"
    if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED (crash, or did not build): ${failed[*]}" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran ${seconds}s without a crash"
