#!/bin/sh
# Adds the vault-dr agent sidecar (examples/openbao-agent-values.yaml or vault-agent-values.yaml,
# your edited copy) to the values a Vault/OpenBao release already has, without losing any of them:
#
#   helm get values openbao-dc1 -n vault -o yaml > openbao-dc1-current.yaml
#   sh merge-values.sh openbao-dc1-current.yaml dc1-agent.yaml > openbao-dc1-merged.yaml
#   helm upgrade openbao-dc1 openbao/openbao -n vault --version <the release's chart version> \
#     -f openbao-dc1-merged.yaml
#
# Why: Helm replaces a list value as a whole, so `helm upgrade --reuse-values -f dc1-agent.yaml`
# would replace the release's own `server.volumes` and `server.extraContainers` (TLS, seal-key
# volumes, other sidecars) with the example's. This script merges instead:
#   - maps are merged key by key, recursively;
#   - a list whose entries all have a `name` (volumes, containers, env, ports) is merged by name,
#     and a list of volume mounts by `mountPath` (as Kubernetes merges them): an entry of the
#     example replaces the release's entry with the same key in its place, the others are
#     appended; every other entry of the release stays, in its order;
#   - any other list: the example's entries that are not already there are appended;
#   - a scalar (string, number, bool) of the example replaces the release's;
#   - a map, list or scalar facing a value of another kind stops the merge with its path.
# So running it again on its own output changes nothing (idempotent), and nothing of the release
# is dropped. The output holds the release's user-supplied values plus the example's: use it with
# `-f` on its own (`--reuse-values` is not needed). Take `helm get values` WITHOUT `-a`: merging
# the chart's computed defaults would freeze them into the release.
#
# It also warns (on stderr; the output is written all the same) when the merged values do not give
# the server what vault-dr needs: HA with raft storage and `service_registration "kubernetes"`
# in `server.ha.raft.config`, whose API listener is off the port the write gate serves.
#
# Needs only helm (3.x): the merge runs in Helm's own template engine, with Helm's YAML parser,
# on a throw-away chart in a temporary directory; no cluster and no chart repository is contacted.
# HELM=/path/to/helm picks the binary. POSIX sh.
set -eu

usage() {
    echo "usage: $0 RELEASE_VALUES ADDITION > MERGED (RELEASE_VALUES may be - for stdin)" >&2
    exit 64
}
[ "$#" -eq 2 ] || usage
HELM="${HELM:-helm}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT HUP INT TERM
mkdir -p "$tmp/chart/templates"
if [ "$1" = "-" ]; then
    cat >"$tmp/release.yaml"
else
    cp "$1" "$tmp/release.yaml"
fi
cp "$2" "$tmp/addition.yaml"

cat >"$tmp/chart/Chart.yaml" <<'EOF'
apiVersion: v2
name: vault-dr-merge-values
version: 0.0.0
EOF

cat >"$tmp/chart/templates/merged.yaml" <<'EOF'
{{- /* .a (release) merged with .b (addition); .path names the place. Returns {"v": result}
as JSON: an include can only return a string. */ -}}
{{- define "merge" -}}
{{- $a := .a -}}
{{- $b := .b -}}
{{- $path := .path -}}
{{- $out := $b -}}
{{- if and (kindIs "map" $a) (kindIs "map" $b) -}}
  {{- $m := dict -}}
  {{- range $k, $v := $a -}}{{- $_ := set $m $k $v -}}{{- end -}}
  {{- range $k, $v := $b -}}
    {{- if hasKey $a $k -}}
      {{- $r := include "merge" (dict "a" (get $a $k) "b" $v "path" (trimPrefix "." (printf "%s.%s" $path $k))) | fromJson -}}
      {{- $_ := set $m $k $r.v -}}
    {{- else -}}
      {{- $_ := set $m $k $v -}}
    {{- end -}}
  {{- end -}}
  {{- $out = $m -}}
{{- else if and (kindIs "slice" $a) (kindIs "slice" $b) -}}
  {{- $l := list -}}
  {{- $key := include "key" (concat $a $b) -}}
  {{- if $key -}}
    {{- $new := dict -}}
    {{- range $b -}}{{- $_ := set $new (get . $key) . -}}{{- end -}}
    {{- $seen := dict -}}
    {{- range $a -}}
      {{- $k := get . $key -}}
      {{- $_ := set $seen $k true -}}
      {{- if hasKey $new $k -}}{{- $l = append $l (get $new $k) -}}{{- else -}}{{- $l = append $l . -}}{{- end -}}
    {{- end -}}
    {{- range $b -}}
      {{- $k := get . $key -}}
      {{- if not (hasKey $seen $k) -}}{{- $_ := set $seen $k true -}}{{- $l = append $l . -}}{{- end -}}
    {{- end -}}
  {{- else -}}
    {{- $have := dict -}}
    {{- range $a -}}{{- $_ := set $have (toJson .) true -}}{{- $l = append $l . -}}{{- end -}}
    {{- range $b -}}
      {{- if not (hasKey $have (toJson .)) -}}{{- $_ := set $have (toJson .) true -}}{{- $l = append $l . -}}{{- end -}}
    {{- end -}}
  {{- end -}}
  {{- $out = $l -}}
{{- else if and (not (kindIs "invalid" $a)) (not (kindIs "invalid" $b)) (or (kindIs "map" $a) (kindIs "map" $b) (kindIs "slice" $a) (kindIs "slice" $b)) -}}
  {{- fail (printf "cannot merge %s: the release has a %s there, the addition a %s; merge it by hand" $path (kindOf $a) (kindOf $b)) -}}
{{- end -}}
{{- dict "v" $out | toJson -}}
{{- end -}}

{{- /* The key a list is merged by: "mountPath" when every entry is a map with a string
`mountPath` (volumeMounts: two mounts may share a volume), else "name" when every entry is a map
with a string `name`, else "" (the list is appended to). */ -}}
{{- define "key" -}}
{{- $named := gt (len .) 0 -}}
{{- $mounts := gt (len .) 0 -}}
{{- range . -}}
  {{- if not (and (kindIs "map" .) (kindIs "string" .name)) -}}{{- $named = false -}}{{- end -}}
  {{- if not (and (kindIs "map" .) (kindIs "string" .mountPath)) -}}{{- $mounts = false -}}{{- end -}}
{{- end -}}
{{- if $mounts -}}mountPath{{- else if $named -}}name{{- end -}}
{{- end -}}

{{- $release := .Values.release | fromYaml -}}
{{- if hasKey $release "Error" -}}{{- fail (printf "the release values are not YAML: %s" $release.Error) -}}{{- end -}}
{{- $addition := .Values.addition | fromYaml -}}
{{- if hasKey $addition "Error" -}}{{- fail (printf "the addition is not YAML: %s" $addition.Error) -}}{{- end -}}
{{- $merged := (include "merge" (dict "a" $release "b" $addition "path" "") | fromJson).v -}}

{{- /* What vault-dr needs from the server, checked on the result (warnings, prefixed #WARN). */ -}}
{{- $server := default dict $merged.server -}}
{{- $ha := default dict $server.ha -}}
{{- $raft := default dict $ha.raft -}}
{{- if not (and (eq (toString $ha.enabled) "true") (eq (toString $raft.enabled) "true")) }}
#WARN server.ha.enabled and server.ha.raft.enabled are not both true: vault-dr needs HA raft (raft snapshots, the active-pod label)
{{- end }}
{{- $was := (default dict (default dict (default dict $release.server).ha).raft).enabled -}}
{{- if ne (toString $was) "true" }}
#WARN the release did not set server.ha.raft.enabled: true; if it runs today on other storage (the chart's default is standalone with "file"), HA raft starts on EMPTY raft storage (migrate first: bao operator migrate)
{{- end }}
{{- if not (hasKey $raft "config") }}
#WARN server.ha.raft.config is not set: the chart's default listens on [::]:8200, the port the write gate serves; set it as the example's comment shows
{{- else if kindIs "string" $raft.config }}
{{- if not (regexMatch "service_registration\\s+\"kubernetes\"" $raft.config) }}
#WARN server.ha.raft.config has no service_registration "kubernetes" stanza: no pod gets the active label that clusters[].selector and the traffic switch use
{{- end }}
{{- if not (contains "127.0.0.1:8300" $raft.config) }}
#WARN server.ha.raft.config does not listen on 127.0.0.1:8300 (the vault-dr chart's agent.vaultAddr): with the write gate on (agent.gate.listen) the server must not listen on :8200
{{- end }}
{{- end }}
{{ toYaml $merged }}
EOF

out="$tmp/out.yaml"
"$HELM" template vault-dr-merge "$tmp/chart" \
    --set-file "release=$tmp/release.yaml" \
    --set-file "addition=$tmp/addition.yaml" >"$out"
# Warnings to stderr; the values, without Helm's document header, to stdout.
grep '^#WARN ' "$out" | sed 's/^#WARN /merge-values: warning: /' >&2 || true
grep -v -e '^#WARN ' -e '^---$' -e '^# Source: ' "$out" | sed '/./,$!d'
