#!/usr/bin/env bash
# Builds the two vault-dr container images as OCI image archives, without Docker or any daemon:
#   <out>/vault-dr-coordinator.oci.tar   <repository>/vault-dr-coordinator:<tag>  (the `vault-dr` binary)
#   <out>/vault-dr-agent.oci.tar         <repository>/vault-dr-agent:<tag>        (the sidecar)
# from binaries already built (default target/release, after
#   cargo build --release --locked -p vault-dr-coordinator -p vault-dr-agent).
# Each archive loads with `docker load -i`, `podman load -i`, `ctr -n k8s.io images import`, and
# pushes with `skopeo copy oci-archive:<file> docker://<ref>` (helm/vault-dr/README.md, "Images").
#
# Usage: scripts/build-images.sh [--bin-dir DIR] [--repository PREFIX] [--tag TAG] [--out DIR]
#                                [--revision COMMIT] [--ca-bundle FILE]
#   --bin-dir     where vault-dr and vault-dr-agent are             [target/release]
#   --repository  registry and path the image names start with     [ghcr.io/vault-dr, the chart's]
#   --tag         image tag                                         [the chart's appVersion]
#   --out         directory the archives are written to             [target/images]
#   --revision    org.opencontainers.image.revision label, e.g. "$(git rev-parse HEAD)"  [none]
#   --ca-bundle   the CA certificates the images trust   [/etc/ssl/certs/ca-certificates.crt]
# SOURCE_DATE_EPOCH, when set, is the images' creation time (else 1970-01-01): the same binaries
# give the same image digest. Prints one line per image: file, reference, manifest digest.
#
# What goes in (scripts/oci_image.py): the binary, the glibc libraries `ldd` names, copied from
# this machine (build on the distribution whose glibc you want to ship), this machine's CA bundle,
# /etc/passwd and /etc/group naming the user the chart runs each image as, /tmp. The users:
#   coordinator  65532:65532 (nonroot)   helm/vault-dr/templates/coordinator-deployment.yaml
#   agent        100:1000    (vault-dr)  the OpenBao/Vault server's user, so that the sidecar may
#                                        signal the server and share its data volume
#                                        (helm/vault-dr/examples/*-agent-values.yaml)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { printf 'build-images: %s\n' "$*" >&2; exit 64; }

bin_dir="$ROOT/target/release"
repository="ghcr.io/vault-dr"
tag="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$ROOT/helm/vault-dr/Chart.yaml")"
out="$ROOT/target/images"
revision=""
ca_bundle="/etc/ssl/certs/ca-certificates.crt"
while (($#)); do
    case "$1" in
        --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
        --repository) repository="${2:?--repository needs a value}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --revision) revision="${2:?--revision needs a value}"; shift 2 ;;
        --ca-bundle) ca_bundle="${2:?--ca-bundle needs a file}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -n "$tag" ]] || die "no --tag, and no appVersion in helm/vault-dr/Chart.yaml"
repository="${repository%/}"
for bin in vault-dr vault-dr-agent; do
    [[ -x "$bin_dir/$bin" ]] || die "$bin_dir/$bin is missing: cargo build --release --locked -p vault-dr-coordinator -p vault-dr-agent (or pass --bin-dir)"
done
command -v python3 >/dev/null || die "python3 not found (scripts/setup.sh installs it)"
command -v ldd >/dev/null || die "ldd not found (Debian: apt-get install libc-bin)"

version="$(sed -n 's/^version *= *"\([^"]*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)"
source_url="$(sed -n 's/^repository *= *"\([^"]*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)"
common_labels=(
    --label "org.opencontainers.image.version=$version"
    --label "org.opencontainers.image.licenses=Apache-2.0"
    --label "org.opencontainers.image.source=$source_url"
    --label "org.opencontainers.image.vendor=vault-dr"
)
[[ -n "$revision" ]] && common_labels+=(--label "org.opencontainers.image.revision=$revision")
if [[ -n "${SOURCE_DATE_EPOCH:-}" ]]; then
    common_labels+=(--label "org.opencontainers.image.created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)")
fi

mkdir -p "$out"

# name binary user:group user-name port description [default arguments...]
image() {
    local name="$1" binary="$2" user="$3" user_name="$4" port="$5" description="$6"
    shift 6
    local ref="$repository/$name:$tag" file="$out/$name.oci.tar" cmd=() digest
    for arg in "$@"; do cmd+=("--cmd=$arg"); done
    digest="$(python3 "$ROOT/scripts/oci_image.py" \
        --binary "$bin_dir/$binary" --install-path "/usr/local/bin/$binary" \
        --ref "$ref" --out "$file" --user "$user" --user-name "$user_name" --port "$port" \
        --ca-bundle "$ca_bundle" \
        "${cmd[@]}" "${common_labels[@]}" \
        --label "org.opencontainers.image.title=$name" \
        --label "org.opencontainers.image.description=$description")"
    printf '%s %s %s\n' "$file" "$ref" "$digest"
}

image vault-dr-coordinator vault-dr 65532:65532 nonroot 8300/tcp \
    "vault-dr coordinator service and operator CLI (vault-dr status)" \
    coordinator --config /etc/vault-dr/config.toml
image vault-dr-agent vault-dr-agent 100:1000 vault-dr 8210/tcp \
    "vault-dr agent: the sidecar of a Vault/OpenBao node"
