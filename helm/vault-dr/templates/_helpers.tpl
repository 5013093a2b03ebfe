{{/* Names, labels and shared snippets of the vault-dr chart. */}}

{{- define "vault-dr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vault-dr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vault-dr.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "vault-dr.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vault-dr.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vault-dr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vault-dr
{{- end -}}

{{- define "vault-dr.coordinator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vault-dr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end -}}

{{- define "vault-dr.coordinator.labels" -}}
{{ include "vault-dr.labels" . }}
app.kubernetes.io/component: coordinator
{{- end -}}

{{- define "vault-dr.serviceAccountName" -}}
{{- if .Values.coordinator.serviceAccount.create -}}
{{- default (include "vault-dr.coordinator.fullname" .) .Values.coordinator.serviceAccount.name -}}
{{- else -}}
{{- required "coordinator.serviceAccount.name is required when serviceAccount.create is false" .Values.coordinator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vault-dr.coordinator.image" -}}
{{- printf "%s:%s" .Values.coordinator.image.repository (default .Chart.AppVersion .Values.coordinator.image.tag) -}}
{{- end -}}

{{/* The primary cluster of term 1 (exactly one; the coordinator validates the rest). */}}
{{- define "vault-dr.primary" -}}
{{- $primaries := list -}}
{{- range .Values.clusters -}}
{{- if eq (default "secondary" .role) "primary" -}}
{{- $primaries = append $primaries . -}}
{{- end -}}
{{- end -}}
{{- if ne (len $primaries) 1 -}}
{{- fail (printf "clusters: exactly one cluster must have role: primary (found %d)" (len $primaries)) -}}
{{- end -}}
{{- toJson (first $primaries) -}}
{{- end -}}
