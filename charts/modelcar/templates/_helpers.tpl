{{- define "modelcar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelcar.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modelcar.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image of a role: (dict "root" $ "role" .Values.<role>.image); a role's empty
fields fall back to image.*; a digest pins it. */}}
{{- define "modelcar.image" -}}
{{- $g := .root.Values.image -}}
{{- $r := .role | default dict -}}
{{- $repo := $r.repository | default $g.repository -}}
{{- $digest := $r.digest | default (ternary $g.digest "" (not $r.repository)) -}}
{{- if $digest -}}
{{ $repo }}@{{ $digest }}
{{- else -}}
{{ $repo }}:{{ $r.tag | default $g.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Containers: no privilege, nothing writable but mounted volumes. */}}
{{- define "modelcar.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "modelcar.apiUrl" -}}
http://{{ include "modelcar.fullname" . }}-api.{{ .Release.Namespace }}.svc:{{ .Values.api.service.port }}
{{- end -}}
