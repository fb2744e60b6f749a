{{/* Chart name, overridable. */}}
{{- define "sqlfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full resource name: release-chart unless overridden. */}}
{{- define "sqlfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "sqlfleet.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "sqlfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sqlfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods. */}}
{{- define "sqlfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sqlfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret holding keys and S3 credentials: an existing one, or the chart's. */}}
{{- define "sqlfleet.secretName" -}}
{{- default (include "sqlfleet.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Whether any secret is configured at all. */}}
{{- define "sqlfleet.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.adminKey .Values.secrets.s3AccessKeyId .Values.secrets.backupEncryptionKeys }}true{{ end }}
{{- end }}

{{/* Whether backup encryption keys are mounted from the Secret (else backups are not encrypted). */}}
{{- define "sqlfleet.hasBackupKeys" -}}
{{- if or .Values.secrets.backupEncryptionKeys (and .Values.secrets.existingSecret .Values.secrets.existingSecretHasBackupEncryptionKeys) }}true{{ end }}
{{- end }}

{{/* Whether existingSecret holds the signing key. */}}
{{- define "sqlfleet.signingKeyInExistingSecret" -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.existingSecretHasSigningKey }}true{{ end }}
{{- end }}

{{/* Whether the chart makes the signing key's own Secret (signing-key-secret.yaml): a key given
in signingKey, or one generated at install (generateSigningKey). */}}
{{- define "sqlfleet.ownsSigningKey" -}}
{{- if and (not (include "sqlfleet.signingKeyInExistingSecret" .)) (or .Values.secrets.signingKey .Values.secrets.generateSigningKey) }}true{{ end }}
{{- end }}

{{/* Whether a signing key is mounted from a Secret (else the server keeps its own on the volume). */}}
{{- define "sqlfleet.hasSigningKey" -}}
{{- if or (include "sqlfleet.signingKeyInExistingSecret" .) (include "sqlfleet.ownsSigningKey" .) }}true{{ end }}
{{- end }}

{{/* The Secret holding signing-key.pem. */}}
{{- define "sqlfleet.signingKeySecretName" -}}
{{- if include "sqlfleet.signingKeyInExistingSecret" . }}{{ .Values.secrets.existingSecret }}{{ else }}{{ include "sqlfleet.fullname" . }}-signing-key{{ end }}
{{- end }}

{{/* Cluster mode needs etcd, an S3 replica, and one admin key and one signing key for every
pod: fail early. */}}
{{- define "sqlfleet.clusterChecks" -}}
{{- if not .Values.cluster.etcdEndpoints }}{{ fail "cluster.enabled needs cluster.etcdEndpoints" }}{{ end }}
{{- if not (hasPrefix "s3://" (toString .Values.settings.replica_url)) }}{{ fail "cluster.enabled needs settings.replica_url s3://BUCKET/PREFIX: the pods share no disk" }}{{ end }}
{{- if not (or .Values.secrets.adminKey .Values.secrets.existingSecret) }}{{ fail "cluster.enabled needs one admin key for every pod: secrets.adminKey or an existing Secret holding SQLFLEET_ADMIN_KEY" }}{{ end }}
{{- if not (include "sqlfleet.hasSigningKey" .) }}{{ fail "cluster.enabled needs one signing key for every pod: secrets.signingKey, secrets.generateSigningKey or an existing Secret holding it" }}{{ end }}
{{- end }}
