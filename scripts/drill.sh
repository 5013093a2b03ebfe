#!/usr/bin/env bash
# The local drill from a fresh checkout, in one command:
#   1. scripts/setup.sh --no-helm (OpenBao, SecantusDB, the Debian packages) runs in the background,
#      at low CPU priority, while
#   2. cargo builds the three binaries the drill runs (`vault-dr-lab`, `vault-dr`, `vault-dr-agent`;
#      debug profile) without the coordinator's Kubernetes and MongoDB backends, which the drill
#      does not use (with `--mongodb-uri`, or VAULT_DR_MONGODB_URI set, the MongoDB store is
#      built in);
#   3. then `target/debug/vault-dr-lab drill "$@"` (see README "The drill" for its flags).
# On a fresh 2-core machine the build is most of the time; setup mostly waits on the network, so
# running both at once saves its whole duration. Exit status: setup's or cargo's when either fails,
# else the drill's (0 = exactly one promotion, clients served by the new primary).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v cargo >/dev/null; then
    printf 'drill.sh: cargo not found: install Rust first (https://rustup.rs), then run this again\n' >&2
    exit 1
fi

setup_log="$(mktemp "${TMPDIR:-/tmp}/vault-dr-setup.XXXXXX")"
nice -n 10 bash scripts/setup.sh --no-helm >"$setup_log" 2>&1 &
setup_pid=$!
printf 'drill.sh: scripts/setup.sh --no-helm runs in the background (log %s); building ...\n' "$setup_log" >&2

stop_setup() {
    # Ctrl-C reaches cargo or the drill in the foreground; the background setup ignores SIGINT
    # (non-interactive shell), so stop it here rather than leave it running.
    kill -TERM "$setup_pid" 2>/dev/null || true
    wait "$setup_pid" 2>/dev/null || true
    exit 130
}
trap stop_setup INT TERM

features=(--no-default-features)
for arg in "$@"; do
    [[ "$arg" == --mongodb-uri* ]] && features=(--no-default-features --features vault-dr-coordinator/mongodb)
done
[[ -n "${VAULT_DR_MONGODB_URI:-}" ]] && features=(--no-default-features --features vault-dr-coordinator/mongodb)

build_rc=0
# Packages named with -p (not --bin): with --bin cargo resolves features for the whole workspace,
# and the tests crate would switch the Kubernetes and MongoDB backends back on.
cargo build "${features[@]}" -p vault-dr-lab -p vault-dr-coordinator -p vault-dr-agent \
    --bin vault-dr-lab --bin vault-dr --bin vault-dr-agent || build_rc=$?

setup_rc=0
wait "$setup_pid" || setup_rc=$?
if ((setup_rc != 0)); then
    cat "$setup_log" >&2
    printf 'drill.sh: scripts/setup.sh --no-helm failed (exit %d); its output is above\n' "$setup_rc" >&2
    exit "$setup_rc"
fi
grep -E '^setup: (ok|installing|pip installing|OpenBao)' "$setup_log" >&2 || true
rm -f "$setup_log"
if ((build_rc != 0)); then
    printf 'drill.sh: cargo build failed (exit %d)\n' "$build_rc" >&2
    exit "$build_rc"
fi

trap - INT TERM
exec target/debug/vault-dr-lab drill "$@"
