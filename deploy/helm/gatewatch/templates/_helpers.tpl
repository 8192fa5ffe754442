{{/* The release's base name: the release name, or "<release>-gatewatch" when it does not contain "gatewatch". */}}
{{- define "gatewatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one tier; call with (dict "root" $ "tier" "edge"). Never changes between releases. */}}
{{- define "gatewatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .tier }}
{{- end -}}

{{- define "gatewatch.labels" -}}
{{ include "gatewatch.selectorLabels" . }}
app.kubernetes.io/part-of: gatewatch
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* A tier's Gatewatch config file, rendered with tpl so values may name the release's objects. */}}
{{- define "gatewatch.config" -}}
{{- $cfg := index .root.Values .tier "config" -}}
{{- tpl (toYaml $cfg) .root -}}
{{- end -}}

{{- define "gatewatch.adminSecretName" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin-token" (include "gatewatch.fullname" .)) -}}
{{- end -}}
