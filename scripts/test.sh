#!/usr/bin/env bash
# Full check of the workspace: install the test prerequisites, build every target, run every test.
# Extra arguments are passed to `cargo test --workspace` (e.g. `scripts/test.sh -- --nocapture`).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
cargo build --workspace --all-targets
# Three tests at a time (unless RUST_TEST_THREADS says otherwise): the integration tests spend
# most of their time waiting for OpenBao, elections and timeouts, not on the CPU. On 2 cores the
# integration binary took 288 s with 3 and 394 s with 2, every test passing in both.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-3}"
cargo test --workspace --no-fail-fast "$@"
