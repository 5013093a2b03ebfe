#!/usr/bin/env bash
# Full check of the workspace: install the test prerequisites, build every target, run every test.
# Extra arguments are passed to `cargo test --workspace` (e.g. `scripts/test.sh -- --nocapture`).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast "$@"
