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

{{/* The file the store URL's sslrootcert names ("" when none, or libpq's "system"). */}}
{{- define "histor.storeCaPath" -}}
{{- $param := regexFind "[?&]sslrootcert=[^&#]*" .Values.store.postgres.url -}}
{{- $path := regexReplaceAll "^[?&]sslrootcert=" $param "" -}}
{{- if ne $path "system" -}}{{ $path }}{{- end -}}
{{- end -}}

{{/* Where the password Secret is mounted; `--store-password-file` names the file in it. */}}
{{- define "histor.storePasswordDir" -}}/etc/histor/store-password{{- end -}}

{{/* Refuse combinations that cannot work, with a message saying what to change. */}}
{{- define "histor.validate" -}}
{{- if and .Values.webhook.clientCA.existingSecret .Values.webhook.clientCA.existingConfigMap -}}
{{- fail "webhook.clientCA: set existingSecret or existingConfigMap, not both." -}}
{{- end -}}
{{- $replicas := int .Values.replicas -}}
{{- if and (eq .Values.store.engine "sled") (gt $replicas 1) -}}
{{- fail (printf "replicas=%d needs store.engine=postgres: a sled store belongs to one pod, so each replica would keep its own part of the history. Run one replica with sled, or share one PostgreSQL (README, \"More than one replica\")." $replicas) -}}
{{- end -}}
{{- if and (gt $replicas 1) (not .Values.operator.leaderElection.enabled) -}}
{{- fail "replicas > 1 needs operator.leaderElection.enabled=true: without a leader every replica would write ChangeRecords and send notifications." -}}
{{- end -}}
{{- if and .Values.witness.enabled (not (regexMatch "[1-9]" .Values.witness.confirmWindow)) -}}
{{- fail (printf "witness.confirmWindow=%s: a zero window would call every change notApplied before the watch could see it; use a few seconds at least (default 30s)." .Values.witness.confirmWindow) -}}
{{- end -}}
{{- if eq .Values.store.engine "postgres" -}}
{{- $pg := .Values.store.postgres -}}
{{- if not $pg.url -}}
{{- fail "store.engine=postgres needs store.postgres.url (postgres://USER@HOST:PORT/DB?sslmode=verify-full&sslrootcert=/etc/histor/store-ca/ca.crt)." -}}
{{- end -}}
{{- if regexMatch "^[a-z]+://[^/@?#]*:[^/@?#]*@" $pg.url -}}
{{- fail "store.postgres.url holds a password: keep it in the Secret store.postgres.existingSecret instead (it is mounted as a file, not shown in the pod spec)." -}}
{{- end -}}
{{- if not $pg.existingSecret -}}
{{- fail "store.engine=postgres needs store.postgres.existingSecret: a Secret holding the password of the URL's user (key store.postgres.passwordKey)." -}}
{{- end -}}
{{- $caPath := include "histor.storeCaPath" . -}}
{{- if and $pg.caSecret (not $caPath) -}}
{{- fail "store.postgres.caSecret is set but store.postgres.url names no sslrootcert file: add &sslrootcert=/etc/histor/store-ca/ca.crt (the chart mounts the CA there)." -}}
{{- end -}}
{{- if and $caPath (not $pg.caSecret) -}}
{{- fail (printf "store.postgres.url names sslrootcert=%s but store.postgres.caSecret is empty: name the Secret holding that CA certificate." $caPath) -}}
{{- end -}}
{{- if $caPath -}}
{{- $caDir := dir $caPath -}}
{{- if or (not (isAbs $caPath)) (eq $caDir "/") (has $caDir (list "/var/lib/histor" "/var/run/histor/tls" "/etc/histor/hmac" "/etc/histor/webhook-client-ca" (include "histor.storePasswordDir" .) "/tmp")) -}}
{{- fail (printf "store.postgres.url: sslrootcert=%s must be an absolute path in a directory of its own, such as /etc/histor/store-ca/ca.crt (the chart mounts caSecret on that directory)." $caPath) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
