{{/* The bundled NATS server's configuration (nats.yaml); hashed into the pods' annotations. */}}
{{- define "jobq.natsConf" -}}
{{- $name := include "jobq.natsName" . }}
{{- $b := .Values.nats.bundled }}
{{- $auth := .Values.nats.auth }}
{{- $headless := printf "%s-headless" $name -}}
# $POD_NAME and the credentials below are resolved from the container's environment.
server_name: $POD_NAME
pid_file: /var/run/nats/nats.pid
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
lame_duck_grace_period: 5s
lame_duck_duration: 30s
jetstream {
  store_dir: /data
  max_file_store: {{ $b.jetstream.maxFileStore }}
  max_memory_store: {{ $b.jetstream.maxMemoryStore }}
  # "always": fsync every write before acknowledging it; a duration (nats-server's default is 2m)
  # acknowledges first and fsyncs that often, so acked writes can be lost with the machine.
  sync_interval: {{ $b.jetstream.syncInterval | quote }}
}
cluster {
  name: {{ $name }}
  listen: 0.0.0.0:6222
  routes: [
    {{- range $i := until (int $b.replicas) }}
    nats://{{ $name }}-{{ $i }}.{{ $headless }}.{{ $.Release.Namespace }}.svc.{{ $b.clusterDomain }}:6222
    {{- end }}
  ]
}
{{- if .Values.nats.tls.enabled }}
# Clients must speak TLS (nats.tls); the certificate is renewed in place (cert-manager), and
# nats-server reads it again on reload. Routes between the servers stay plain.
tls {
  cert_file: /etc/nats-tls/tls.crt
  key_file: /etc/nats-tls/tls.key
  ca_file: /etc/nats-tls/ca.crt
  timeout: 5
}
{{- end }}
{{- if $auth.rolesSecret }}
# A user per role and the auth callout (`jobq nats-auth init`), from Secret {{ $auth.rolesSecret }}.
include "auth/authorization.conf"
{{- else if $auth.userSecret.name }}
authorization {
  user: $JOBQ_NATS_USER
  password: $JOBQ_NATS_PASSWORD
}
{{- else if $auth.tokenSecret.name }}
authorization {
  token: $JOBQ_NATS_TOKEN
}
{{- end }}
{{- end -}}
