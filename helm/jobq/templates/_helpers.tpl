{{/* Chart name, at most 63 characters. */}}
{{- define "jobq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, plus the chart name unless the release name contains it. */}}
{{- define "jobq.fullname" -}}
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

{{- define "jobq.natsName" -}}
{{- printf "%s-nats" (include "jobq.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "jobq.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jobq
{{- end -}}

{{- define "jobq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dispatcher
{{- end -}}

{{- define "jobq.labels" -}}
{{ include "jobq.commonLabels" . }}
{{ include "jobq.selectorLabels" . }}
{{- end -}}

{{- define "jobq.natsSelectorLabels" -}}
app.kubernetes.io/name: {{ include "jobq.name" . }}-nats
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end -}}

{{- define "jobq.natsLabels" -}}
{{ include "jobq.commonLabels" . }}
{{ include "jobq.natsSelectorLabels" . }}
{{- end -}}

{{- define "jobq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "jobq.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "jobq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* JOBQ_NATS_URL: the bundled cluster's Service (namespace-qualified: task pods run elsewhere) or nats.url. */}}
{{- define "jobq.natsUrl" -}}
{{- if eq .Values.nats.mode "bundled" -}}
{{- printf "nats://%s.%s.svc.%s:4222" (include "jobq.natsName" .) .Release.Namespace .Values.nats.bundled.clusterDomain -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* The Secret with NATS's CA (and, bundled, its certificate), and the task pods' copy of the CA. */}}
{{- define "jobq.natsTlsSecret" -}}
{{- default (printf "%s-tls" (include "jobq.natsName" .)) .Values.nats.tls.secretName -}}
{{- end -}}

{{- define "jobq.natsPodCaSecret" -}}
{{- default (printf "%s-ca" (include "jobq.natsName" .)) .Values.nats.tls.podCaSecret -}}
{{- end -}}

{{- define "jobq.natsReplicas" -}}
{{- if eq .Values.nats.mode "bundled" -}}{{ .Values.nats.bundled.replicas }}{{- else -}}{{ .Values.nats.replicas }}{{- end -}}
{{- end -}}

{{/* "gpu=2,default=50" from a map, in key order. */}}
{{- define "jobq.queueLimits" -}}
{{- $parts := list -}}
{{- range $queue, $limit := .Values.dispatcher.queueLimits -}}
{{- $parts = append $parts (printf "%s=%d" $queue (int $limit)) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* "scratch=3600,default=86400" from a map, in key order. */}}
{{- define "jobq.queueRetention" -}}
{{- $parts := list -}}
{{- range $queue, $seconds := .Values.dispatcher.queueRetention -}}
{{- $parts = append $parts (printf "%s=%v" $queue $seconds) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{- define "jobq.gpuNodeSelector" -}}
{{- $parts := list -}}
{{- range $label, $value := .Values.backend.gpuNodeSelector -}}
{{- $parts = append $parts (printf "%s=%s" $label $value) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* Checks the schema cannot express. */}}
{{- define "jobq.validate" -}}
{{- $auth := .Values.nats.auth -}}
{{- $kinds := 0 -}}
{{- if $auth.credsSecret.name }}{{ $kinds = add1 $kinds }}{{ end -}}
{{- if $auth.userSecret.name }}{{ $kinds = add1 $kinds }}{{ end -}}
{{- if $auth.tokenSecret.name }}{{ $kinds = add1 $kinds }}{{ end -}}
{{- if $auth.rolesSecret }}{{ $kinds = add1 $kinds }}{{ end -}}
{{- if gt $kinds 1 -}}
{{- fail "nats.auth: set only one of credsSecret, userSecret, tokenSecret and rolesSecret" -}}
{{- end -}}
{{- if and (eq .Values.nats.mode "bundled") $auth.credsSecret.name -}}
{{- fail "nats.auth.credsSecret needs an external NATS in operator (JWT) mode; the bundled NATS supports userSecret or tokenSecret" -}}
{{- end -}}
{{- $cm := .Values.nats.tls.certManager -}}
{{- if and .Values.nats.tls.enabled $cm.enabled (not $cm.issuerRef.name) -}}
{{- fail "nats.tls.certManager.issuerRef.name is required when nats.tls.certManager.enabled" -}}
{{- end -}}
{{- if and .Values.nats.tls.enabled $cm.enabled (not .Values.nats.tls.podCaSecret) (ne $cm.issuerRef.kind "ClusterIssuer") -}}
{{- fail "nats.tls: task pods need the CA in backend.namespace: use a ClusterIssuer, or set nats.tls.podCaSecret to a Secret there with key ca.crt" -}}
{{- end -}}
{{- if le (float64 .Values.dispatcher.terminationGracePeriodSeconds) (float64 .Values.dispatcher.shutdownGraceS) -}}
{{- fail (printf "dispatcher.terminationGracePeriodSeconds (%v) must be greater than dispatcher.shutdownGraceS (%v), or the kubelet kills the dispatcher before it has drained" .Values.dispatcher.terminationGracePeriodSeconds .Values.dispatcher.shutdownGraceS) -}}
{{- end -}}
{{- if and .Values.dispatcher.podDisruptionBudget.enabled (ge (int .Values.dispatcher.podDisruptionBudget.minAvailable) (int .Values.dispatcher.replicas)) (gt (int .Values.dispatcher.replicas) 1) -}}
{{- fail "dispatcher.podDisruptionBudget.minAvailable must be below dispatcher.replicas, or no node can ever be drained" -}}
{{- end -}}
{{- end -}}
