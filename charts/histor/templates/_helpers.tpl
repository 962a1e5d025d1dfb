{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "histor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: the release name when it already contains the chart name. */}}
{{- define "histor.fullname" -}}
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

{{- define "histor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "histor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "histor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "histor.labels" -}}
helm.sh/chart: {{ include "histor.chart" . }}
{{ include "histor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: histor
{{- end -}}

{{- define "histor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "histor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "histor.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "histor.leaseName" -}}
{{- default (printf "%s-leader" (include "histor.fullname" .)) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{- define "histor.hmacSecretName" -}}
{{- default (printf "%s-hmac" (include "histor.fullname" .)) .Values.hmac.existingSecret -}}
{{- end -}}

{{- define "histor.hmacSecretKey" -}}
{{- if .Values.hmac.existingSecret -}}{{ .Values.hmac.existingSecretKey }}{{- else -}}key{{- end -}}
{{- end -}}

{{- define "histor.pvcName" -}}
{{- default (printf "%s-data" (include "histor.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* The Secret the operator keeps its self-managed CA and serving certificate in (fixed by the binary). */}}
{{- define "histor.selfManagedTlsSecret" -}}histor-webhook-tls{{- end -}}

{{/* cert-manager objects. */}}
{{- define "histor.certificateName" -}}
{{- printf "%s-serving" (include "histor.fullname" .) -}}
{{- end -}}
{{- define "histor.certificateSecretName" -}}
{{- printf "%s-serving-cert" (include "histor.fullname" .) -}}
{{- end -}}
{{- define "histor.issuerName" -}}
{{- printf "%s-selfsigned" (include "histor.fullname" .) -}}
{{- end -}}

{{/* The annotation that makes cert-manager's CA injector fill a caBundle. */}}
{{- define "histor.injectCaFrom" -}}
{{- printf "%s/%s" .Release.Namespace (include "histor.certificateName" .) -}}
{{- end -}}

{{/* Namespaces whose Secrets the operator may read for sinks: the release namespace plus notify.secretNamespaces. */}}
{{- define "histor.secretNamespaces" -}}
{{- $namespaces := list .Release.Namespace -}}
{{- range .Values.notify.secretNamespaces -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- $namespaces | uniq | toJson -}}
{{- end -}}

{{/* Refuse combinations that cannot work, with a message saying what to change. */}}
{{- define "histor.validate" -}}
{{- if and .Values.webhook.clientCA.existingSecret .Values.webhook.clientCA.existingConfigMap -}}
{{- fail "webhook.clientCA: set existingSecret or existingConfigMap, not both." -}}
{{- end -}}
{{- if and .Values.persistence.enabled (gt (int .Values.replicas) 1) -}}
{{- fail "persistence.enabled=true needs replicas=1: the sled store is a single-writer volume per pod. Set persistence.enabled=false to run more replicas (each keeps what it received)." -}}
{{- end -}}
{{- end -}}
