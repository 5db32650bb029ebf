{{/* Common labels on every object. */}}
{{- define "lumie-coder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: lumie-coder
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the server pods. */}}
{{- define "lumie-coder.server.selectorLabels" -}}
app.kubernetes.io/name: lumie-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of the webhook pods. */}}
{{- define "lumie-coder.webhook.selectorLabels" -}}
app.kubernetes.io/name: lumie-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* image reference: repository:tag or repository@digest. Argument: (list image appVersion). */}}
{{- define "lumie-coder.image" -}}
{{- $img := index . 0 -}}
{{- $appVersion := index . 1 -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default $appVersion }}
{{- end -}}
{{- end -}}

{{/* The username of the server's ServiceAccount. */}}
{{- define "lumie-coder.server.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ .Values.server.name }}
{{- end -}}

{{/* LUMIE_AGENT_URL: what workspace pods use to reach the server. */}}
{{- define "lumie-coder.server.agentUrl" -}}
{{- if .Values.server.agentUrl -}}
{{ .Values.server.agentUrl }}
{{- else -}}
http://{{ .Values.server.name }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}
{{- end -}}

{{/* The Secret holding the webhook's serving certificate. */}}
{{- define "lumie-coder.webhook.tlsSecret" -}}
{{- .Values.webhook.tls.secretName | default (printf "%s-tls" .Values.webhook.name) -}}
{{- end -}}

{{/* certManager mode: the Certificate whose CA cainjector copies into caBundle. The chart's own
     root CA when the chart makes the chain (it does not change when the serving certificate
     renews); with issuerRef, the serving Certificate, whose Secret's ca.crt is that issuer's CA. */}}
{{- define "lumie-coder.webhook.injectCaFrom" -}}
{{- if .Values.webhook.tls.certManager.issuerRef -}}
{{- printf "%s/%s" .Release.Namespace .Values.webhook.name -}}
{{- else -}}
{{- printf "%s/%s-ca" .Release.Namespace .Values.webhook.name -}}
{{- end -}}
{{- end -}}

{{/* Namespaces whose pods pass through the webhook. */}}
{{- define "lumie-coder.webhook.namespaces" -}}
{{- $ns := .Values.webhook.admission.namespaces | default .Values.serviceAccount.workspaceNamespaces -}}
{{- toJson $ns -}}
{{- end -}}

{{/* The DNS names the webhook's serving certificate carries (matches lumie-webhook certs generate). */}}
{{- define "lumie-coder.webhook.dnsNames" -}}
{{- $svc := .Values.webhook.name -}}
{{- $ns := .Release.Namespace -}}
{{- toJson (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) -}}
{{- end -}}

{{/* The server's replica count: server.replicas, or when blank 2 with PostgreSQL and 1 with
     the embedded SQLite database. */}}
{{- define "lumie-coder.server.replicas" -}}
{{- if kindIs "invalid" .Values.server.replicas -}}
{{- if .Values.server.database.existingSecret }}2{{ else }}1{{ end -}}
{{- else -}}
{{- int .Values.server.replicas -}}
{{- end -}}
{{- end -}}

{{/* Fails the render when a value combination cannot work. */}}
{{- define "lumie-coder.validate" -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.tls.mode "existingSecret") (not .Values.webhook.tls.caBundle) -}}
{{- fail "webhook.tls.mode=existingSecret needs webhook.tls.caBundle (base64 PEM of the CA, ca-bundle.b64 from lumie-webhook certs generate)" -}}
{{- end -}}
{{- if and (not .Values.server.database.existingSecret) (gt (int (include "lumie-coder.server.replicas" .)) 1) -}}
{{- fail "server.replicas > 1 needs PostgreSQL (server.database.existingSecret): the embedded SQLite database is per pod" -}}
{{- end -}}
{{- if and .Values.server.database.existingSecret (lt (int .Values.server.leader.leaseDurationSeconds) (mul 2 (int .Values.server.leader.renewSeconds))) -}}
{{- fail "server.leader.leaseDurationSeconds must be at least twice server.leader.renewSeconds" -}}
{{- end -}}
{{- if not .Values.serviceAccount.workspaceNamespaces -}}
{{- fail "serviceAccount.workspaceNamespaces must name at least one namespace" -}}
{{- end -}}
{{- end -}}
