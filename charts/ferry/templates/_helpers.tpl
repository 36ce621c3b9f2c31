{{/* Name prefix of every object: the release name when it already says "ferry", else
"<release>-ferry". At most 40 characters, so that "<prefix>-failover-coordinator" and the NATS
StatefulSet's revision label stay within Kubernetes' 63. */}}
{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ferry.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The services of a node, in metrics-port order. offset: its metrics port is
.Values.metricsPort + offset. port: a short port name (at most 15 characters). values: its key
in values.yaml. data: it mounts the node's data volume (/data): the keymat, the failover role
and the local hosts' files. keymat: it opens the node's keymat. */}}
{{- define "ferry.services" -}}
scheduler: {offset: 0, port: scheduler, values: scheduler, data: true, keymat: true}
file-collector: {offset: 1, port: collector, values: fileCollector, data: true, keymat: true}
transfer: {offset: 2, port: transfer, values: transfer, data: true, keymat: true}
cert-handler: {offset: 3, port: certs, values: certHandler, data: false, keymat: false}
failover-coordinator: {offset: 4, port: failover, values: failoverCoordinator, data: true, keymat: false}
{{- end -}}

{{- define "ferry.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The bundled NATS servers' names. */}}
{{- define "ferry.nats.name" -}}
{{ include "ferry.fullname" . }}-nats
{{- end -}}

{{- define "ferry.nats.tls" -}}
{{- if .Values.nats.bundled.tlsSecret }}true{{ end -}}
{{- end -}}

{{/* The Secret whose auth.conf the bundled servers include (public keys and permissions). */}}
{{- define "ferry.nats.authSecret" -}}
{{ .Values.nats.bundled.authSecret | default .Values.nats.credentialsSecret }}
{{- end -}}

{{/* Where the services connect: the bundled servers' client Service, or nats.url. */}}
{{- define "ferry.nats.url" -}}
{{- if .Values.nats.bundled.enabled -}}
{{ ternary "tls" "nats" (eq (include "ferry.nats.tls" .) "true") }}://{{ include "ferry.nats.name" . }}:4222
{{- else -}}
{{ .Values.nats.url }}
{{- end -}}
{{- end -}}

{{/* Private files copied into each pod's memory volume (mode 0600, Ferry refuses a seed or key
others may read). */}}
{{- define "ferry.private" -}}
{{- if or .Values.nats.credentialsSecret .Values.nats.tlsClientCertificate .Values.keymat.existingSecret }}true{{ end -}}
{{- end -}}

{{/* Settings values Ferry refuses, refused here at render time with the same words. */}}
{{- define "ferry.validate" -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]{1,64}$" (toString .Values.nodeId)) }}
{{- fail (printf "nodeId: %q is not a valid name: use 1-64 letters, digits, '-' or '_'" (toString .Values.nodeId)) }}
{{- end }}
{{- if and .Values.nats.tlsClientCertificate (not .Values.nats.tlsSecret) }}
{{- fail "nats.tlsClientCertificate: the client certificate is read from nats.tlsSecret, which is empty" }}
{{- end }}
{{- if and .Values.nats.bundled.enabled (not .Values.nats.allowInsecure) }}
{{- if not .Values.nats.bundled.tlsSecret }}
{{- fail "nats.bundled.tlsSecret: empty, so the bundled NATS would be plain text: give it a Secret with tls.crt and tls.key, or set nats.allowInsecure=true (evaluation only)" }}
{{- end }}
{{- if not (include "ferry.nats.authSecret" .) }}
{{- fail "nats.bundled.authSecret and nats.credentialsSecret: both empty, so the bundled NATS would accept anonymous clients: give the Secret holding `ferry nats setup`'s auth.conf, or set nats.allowInsecure=true (evaluation only)" }}
{{- end }}
{{- end }}
{{- if and .Values.nats.bundled.enabled (not (has (int .Values.nats.bundled.replicas) (list 1 3 5))) }}
{{- fail (printf "nats.bundled.replicas: %v must be 1, 3 or 5 (a JetStream cluster needs a majority)" .Values.nats.bundled.replicas) }}
{{- end }}
{{- if and .Values.nats.bundled.enabled (gt (int .Values.replicas) (int .Values.nats.bundled.replicas)) }}
{{- fail (printf "replicas: %v streams replicas exceed nats.bundled.replicas (%v servers)" .Values.replicas .Values.nats.bundled.replicas) }}
{{- end }}
{{- if and (not .Values.persistence.enabled) (not .Values.keymat.existingSecret) }}
{{- fail "persistence.enabled: false gives each pod its own /data, so the services would make different keymats and see different local files: enable persistence, or give keymat.existingSecret and use no local hosts" }}
{{- end }}
{{- if not (has .Values.persistence.accessMode (list "ReadWriteOnce" "ReadWriteMany")) }}
{{- fail (printf "persistence.accessMode: %q must be ReadWriteOnce (every pod on one Kubernetes node) or ReadWriteMany" .Values.persistence.accessMode) }}
{{- end }}
{{- if not (has .Values.failover.mode (list "manual" "automatic")) }}
{{- fail (printf "failover.mode: %q must be manual or automatic" .Values.failover.mode) }}
{{- end }}
{{- if not (has .Values.failover.initialRole (list "active" "standby")) }}
{{- fail (printf "failover.initialRole: %q must be active or standby" .Values.failover.initialRole) }}
{{- end }}
{{- end -}}

{{/* Container security: non-root (the pod's user), nothing to escalate, root file system read-only
(services write only to /data, /tmp and the private memory volume). */}}
{{- define "ferry.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
