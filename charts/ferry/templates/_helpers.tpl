{{- define "ferry.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferry.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ferry.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The services of a node: offset of each one's metrics port from .Values.metricsPort, and a
short port name (container port names have at most 15 characters). */}}
{{- define "ferry.services" -}}
scheduler: {offset: 0, port: scheduler}
file-collector: {offset: 1, port: collector}
transfer: {offset: 2, port: transfer}
cert-handler: {offset: 3, port: certs}
failover-coordinator: {offset: 4, port: failover}
{{- end -}}
