{{/*
Names, labels and the pieces of configuration shared by several templates.
*/}}

{{- define "sse-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sse-cluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sse-cluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sse-cluster.labels" -}}
helm.sh/chart: {{ include "sse-cluster.chart" . }}
app.kubernetes.io/name: {{ include "sse-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sse-cluster
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "node"). */}}
{{- define "sse-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sse-cluster.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sse-cluster.componentLabels" -}}
{{ include "sse-cluster.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The fullname with a suffix such as "-node": the fullname is cut first, so
that the suffix is kept whole and the name stays within 63 characters (a
Service's limit). Cutting after appending would give node and admin the
same name once the fullname is 62 characters or more.
Call with (dict "ctx" $ "suffix" "-node").
*/}}
{{- define "sse-cluster.suffixedName" -}}
{{- $max := sub 63 (len .suffix) | int }}
{{- printf "%s%s" (include "sse-cluster.fullname" .ctx | trunc $max | trimSuffix "-") .suffix }}
{{- end }}

{{- define "sse-cluster.node.fullname" -}}
{{- include "sse-cluster.suffixedName" (dict "ctx" . "suffix" "-node") }}
{{- end }}

{{- define "sse-cluster.admin.fullname" -}}
{{- include "sse-cluster.suffixedName" (dict "ctx" . "suffix" "-admin") }}
{{- end }}

{{- define "sse-cluster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sse-cluster.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sse-cluster.secretName" -}}
{{- default (include "sse-cluster.suffixedName" (dict "ctx" . "suffix" "-secrets")) .Values.secrets.existingSecret }}
{{- end }}

{{- define "sse-cluster.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The service name the official nats chart gives its client Service: its
fullname, which follows the same rule as ours.
*/}}
{{- define "sse-cluster.nats.fullname" -}}
{{- if .Values.nats.fullnameOverride }}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" .Values.nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The NATS URL(s) both services connect to. */}}
{{- define "sse-cluster.nats.url" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s:4222" (include "sse-cluster.nats.fullname" .) }}
{{- else if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else }}
{{- fail "NATS: set nats.enabled=true, or nats.enabled=false with externalNats.url" }}
{{- end }}
{{- end }}

{{/*
A map of sections of keys as TOML; a section may hold one level of
sub-tables (such as [auth.jwt]). Helm's own toToml writes every number as a
float (values pass through JSON), which the services' integer keys refuse;
scalar values are written with toJson instead, whose strings, integers,
floats, booleans and arrays are also valid TOML.
*/}}
{{- define "sse-cluster.toml" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $section, $keys := . }}
{{- if kindIs "map" $keys }}

[{{ $section }}]
{{- range $key, $value := $keys }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $table, $inner := $keys }}
{{- if kindIs "map" $inner }}

[{{ $section }}.{{ $table }}]
{{- range $key, $value := $inner }}
{{- if kindIs "map" $value }}
{{- fail (printf "config key %s.%s.%s: tables nested deeper than one level are not supported" $section $table $key) }}
{{- end }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* node.toml: the user's node.config with nats.url filled in. A nats.url of
its own is refused beside the bundled NATS: node and admin would connect to
different servers. */}}
{{- define "sse-cluster.node.toml" -}}
{{- $cfg := deepCopy (default dict .Values.node.config) }}
{{- $nats := default dict (get $cfg "nats") }}
{{- if and (hasKey $nats "url") .Values.nats.enabled }}
{{- fail "node.config.nats.url would point the nodes away from the bundled NATS the chart runs for it (nats.enabled=true): for another NATS set nats.enabled=false and externalNats.url instead" }}
{{- end }}
{{- if not (hasKey $nats "url") }}
{{- $_ := set $nats "url" (include "sse-cluster.nats.url" .) }}
{{- end }}
{{- $_ := set $cfg "nats" $nats }}
{{- range $key := list "cert_file" "key_file" }}
{{- if dig "tls" $key "" $cfg }}
{{- fail (printf "node.config.tls.%s: the node's certificate comes from node.tls.secretName, which also switches probes, the ServiceMonitor and the helm test to HTTPS; set that instead" $key) }}
{{- end }}
{{- end }}
{{- include "sse-cluster.checkJwtFiles" (dict "ctx" . "jwt" (dig "auth" "jwt" dict $cfg)) }}
{{- include "sse-cluster.toml" $cfg | trim }}
{{- end }}

{{/*
The node's JWT key files must be files its pod has: one of secrets.jwtKeys
under node.jwtKeysPath, any file there with secrets.existingJwtSecret (whose
keys the chart does not know), or one under node.extraVolumeMounts. Any other
path would stop the node at start.
*/}}
{{- define "sse-cluster.checkJwtFiles" -}}
{{- $v := .ctx.Values }}
{{- $dir := trimSuffix "/" $v.node.jwtKeysPath }}
{{- $mounted := list }}
{{- range $file, $_ := $v.secrets.jwtKeys }}
{{- $mounted = append $mounted (printf "%s/%s" $dir $file) }}
{{- end }}
{{- range $key := list "hs256_secret_file" "rs256_public_key_file" "es256_public_key_file" "jwks_file" }}
{{- $path := toString (default "" (get $.jwt $key)) }}
{{- if $path }}
{{- $ok := has $path $mounted }}
{{- if $v.secrets.existingJwtSecret }}
{{- $name := trimPrefix (printf "%s/" $dir) $path }}
{{- if and (hasPrefix (printf "%s/" $dir) $path) $name (not (contains "/" $name)) }}{{ $ok = true }}{{ end }}
{{- end }}
{{- range $v.node.extraVolumeMounts }}
{{- $m := trimSuffix "/" (toString .mountPath) }}
{{- if or (eq $path $m) (hasPrefix (printf "%s/" $m) $path) }}{{ $ok = true }}{{ end }}
{{- end }}
{{- if not $ok }}
{{- $have := ternary (printf "the keys of secrets.existingJwtSecret, under %s/" $dir) (ternary (join ", " $mounted) "none (secrets.jwtKeys and secrets.existingJwtSecret are empty)" (gt (len $mounted) 0)) (not (empty $v.secrets.existingJwtSecret)) }}
{{- fail (printf "node.config.auth.jwt.%s (%q) is not a file the chart mounts, and the node would stop at start; the key files it mounts: %s. Name one of them, or mount the file with node.extraVolumeMounts" $key $path $have) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sse-cluster.admin.toml" -}}
{{- $cfg := deepCopy (default dict .Values.admin.config) }}
{{- $nats := default dict (get $cfg "nats") }}
{{- if and (hasKey $nats "url") .Values.nats.enabled }}
{{- fail "admin.config.nats.url would point admin away from the bundled NATS the chart runs for it (nats.enabled=true): for another NATS set nats.enabled=false and externalNats.url instead" }}
{{- end }}
{{- if not (hasKey $nats "url") }}
{{- $_ := set $nats "url" (include "sse-cluster.nats.url" .) }}
{{- end }}
{{- $_ := set $cfg "nats" $nats }}
{{- if hasKey $cfg "admin" }}
{{- if hasKey (get $cfg "admin") "token" }}
{{- fail "admin.config.admin.token would land in a ConfigMap: set secrets.adminToken or secrets.existingSecret instead" }}
{{- end }}
{{- end }}
{{- include "sse-cluster.toml" $cfg | trim }}
{{- end }}

{{/* The node's drain window, from its config or the binary's default. */}}
{{- define "sse-cluster.node.drainSeconds" -}}
{{- $shutdown := default dict (get (default dict .Values.node.config) "shutdown") }}
{{- if hasKey $shutdown "drain_seconds" }}{{ get $shutdown "drain_seconds" | int }}{{ else }}10{{ end }}
{{- end }}

{{/* The nodes' heartbeat interval: node.config.http.heartbeat_seconds, or the node's default. */}}
{{- define "sse-cluster.node.heartbeatSeconds" -}}
{{- $http := default dict (get (default dict .Values.node.config) "http") }}
{{- if hasKey $http "heartbeat_seconds" }}{{ get $http "heartbeat_seconds" | int }}{{ else }}15{{ end }}
{{- end }}

{{/*
extraEnv may not set what the chart derives ports, probes, the advertised
address and its checks from: SSE_* variables outrank the ConfigMap, so the
chart would check and wire values the service never uses. Each is refused
with the value to set instead. Nor may it repeat another name the chart sets
in the container (a name twice in `env`); only the OTEL_* names otelEnv
takes from otel.extraEnv and its own (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES) are replaced instead. Call with (dict "ctx" $
"component" "node" "env" .Values.node.extraEnv).
*/}}
{{- define "sse-cluster.checkExtraEnv" -}}
{{- $c := .component }}
{{- $instead := dict
  "SSE_HTTP__LISTEN" (printf "%s.config.http.listen" $c)
  "SSE_NATS__SUBJECT_PREFIX" (printf "%s.config.nats.subject_prefix" $c)
  "SSE_CLUSTER__NODES_BUCKET" (printf "%s.config.cluster.nodes_bucket" $c)
  "SSE_CLUSTER__NODES_BUCKET_REPLICAS" (printf "%s.config.cluster.nodes_bucket_replicas" $c) }}
{{- if eq $c "node" }}
{{- $_ := set $instead "SSE_HTTP__HEARTBEAT_SECONDS" "node.config.http.heartbeat_seconds" }}
{{- $_ = set $instead "SSE_SHUTDOWN__DRAIN_SECONDS" "node.config.shutdown.drain_seconds" }}
{{- $_ = set $instead "SSE_CLUSTER__ADVERTISE_ADDRESS" "node.config.cluster.advertise_address" }}
{{- $_ = set $instead "SSE_TLS__CERT_FILE" "node.tls.secretName" }}
{{- $_ = set $instead "SSE_TLS__KEY_FILE" "node.tls.secretName" }}
{{- end }}
{{- $v := .ctx.Values }}
{{- /* What else the chart sets in the container, and where it comes from. */}}
{{- $own := dict
  "POD_NAME" "the pod's name"
  "SSE_NATS__CONNECTION_NAME" "the pod's name, as NATS shows its connection" }}
{{- if eq $c "node" }}
{{- $_ := set $own "POD_IP" "the pod's IP" }}
{{- else }}
{{- $_ := set $own "SSE_ADMIN__TOKEN" "secrets.adminToken or secrets.existingSecret" }}
{{- end }}
{{- range include "sse-cluster.natsClientEnv" .ctx | fromYamlArray }}
{{- $_ := set $own .name "externalNats.tls or externalNats.credentials" }}
{{- end }}
{{- if $v.otel.endpoint }}
{{- $_ := set $own "OTEL_EXPORTER_OTLP_ENDPOINT" "otel.endpoint, whose port the NetworkPolicy opens" }}
{{- end }}
{{- range .env }}
{{- $name := upper (toString .name) }}
{{- if hasKey $instead $name }}
{{- fail (printf "%s.extraEnv: %s would override the value the chart derives ports, probes and its checks from; set %s instead" $c .name (get $instead $name)) }}
{{- end }}
{{- if hasKey $own $name }}
{{- fail (printf "%s.extraEnv: %s is set by the chart in this container, from %s" $c .name (get $own $name)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Port number of a `host:port` listen address. */}}
{{- define "sse-cluster.listenPort" -}}
{{- $parts := splitList ":" . }}
{{- last $parts | int }}
{{- end }}

{{/*
OTEL env shared by both workloads: call with (dict "ctx" $ "service"
"sse-node" "env" .Values.node.extraEnv). otel.extraEnv replaces the chart's
own OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (one entry each), and the
workload's extraEnv replaces any of these; the endpoint is otel.endpoint's,
whose port the NetworkPolicy opens.
*/}}
{{- define "sse-cluster.otelEnv" -}}
{{- if .ctx.Values.otel.endpoint }}
{{- $extra := default dict .ctx.Values.otel.extraEnv }}
{{- if hasKey $extra "OTEL_EXPORTER_OTLP_ENDPOINT" }}
{{- fail "otel.extraEnv: OTEL_EXPORTER_OTLP_ENDPOINT is set from otel.endpoint (the NetworkPolicy opens its port): set otel.endpoint instead" }}
{{- end }}
{{- $own := dict
  "OTEL_SERVICE_NAME" .service
  "OTEL_RESOURCE_ATTRIBUTES" (printf "k8s.namespace.name=%s,service.instance.id=$(POD_NAME)" .ctx.Release.Namespace) }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .ctx.Values.otel.endpoint | quote }}
{{- $replaced := list }}
{{- range .env }}{{ $replaced = append $replaced (toString .name) }}{{ end }}
{{- range $k, $v := merge (deepCopy $extra) $own }}
{{- if not (has $k $replaced) }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Container ports, read from the services' own listen addresses. */}}
{{- define "sse-cluster.node.port" -}}
{{- $http := default dict (get (default dict .Values.node.config) "http") }}
{{- include "sse-cluster.listenPort" (default "0.0.0.0:8080" (get $http "listen")) }}
{{- end }}

{{- define "sse-cluster.admin.port" -}}
{{- $http := default dict (get (default dict .Values.admin.config) "http") }}
{{- include "sse-cluster.listenPort" (default "0.0.0.0:8090" (get $http "listen")) }}
{{- end }}

{{- define "sse-cluster.jwtSecretName" -}}
{{- default (include "sse-cluster.suffixedName" (dict "ctx" . "suffix" "-jwt")) .Values.secrets.existingJwtSecret }}
{{- end }}

{{/*
Ports of a comma-separated list of NATS URLs, comma-separated and without
repeats: each URL's own, else NATS's 4222 (nats://, tls:// and a bare
host:port alike).
*/}}
{{- define "sse-cluster.natsUrlPorts" -}}
{{- $ports := list }}
{{- range splitList "," . }}
{{- $u := trim . }}
{{- if $u }}
{{- if not (contains "://" $u) }}{{ $u = printf "nats://%s" $u }}{{ end }}
{{- $host := (urlParse $u).host }}
{{- $port := "4222" }}
{{- if and (contains ":" $host) (not (hasSuffix "]" $host)) }}
{{- $port = last (splitList ":" $host) }}
{{- end }}
{{- $ports = append $ports ($port | int | toString) }}
{{- end }}
{{- end }}
{{- $ports | uniq | sortAlpha | join "," }}
{{- end }}

{{/*
The NATS ports the NetworkPolicies open: networkPolicy.natsPort when set,
else those of the URLs node and admin connect to (the bundled NATS: 4222).
*/}}
{{- define "sse-cluster.np.natsPorts" -}}
{{- if .Values.networkPolicy.natsPort }}
{{- .Values.networkPolicy.natsPort | int }}
{{- else }}
{{- $urls := list (dig "nats" "url" "" (default dict .Values.node.config)) }}
{{- if .Values.admin.enabled }}
{{- $urls = append $urls (dig "nats" "url" "" (default dict .Values.admin.config)) }}
{{- end }}
{{- $chart := "" }}
{{- range $urls }}{{ if not . }}{{ $chart = include "sse-cluster.nats.url" $ }}{{ end }}{{ end }}
{{- include "sse-cluster.natsUrlPorts" (append $urls $chart | join ",") }}
{{- end }}
{{- end }}

{{/* Egress shared by node and admin NetworkPolicies: DNS and NATS. */}}
{{- define "sse-cluster.np.egress" -}}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# NATS: the ports of the URLs node and admin connect to
- ports:
    {{- range include "sse-cluster.np.natsPorts" . | splitList "," }}
    - port: {{ . | int }}
      protocol: TCP
    {{- end }}
  {{- if .Values.networkPolicy.natsEgressTo }}
  to:
    {{- toYaml .Values.networkPolicy.natsEgressTo | nindent 4 }}
  {{- else if .Values.nats.enabled }}
  to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ default "nats" .Values.nats.nameOverride }}
          app.kubernetes.io/instance: {{ .Release.Name }}
  {{- end }}
{{- with .Values.otel.endpoint }}
{{- $url := urlParse . }}
{{- $host := $url.host }}
{{- $schemePort := ternary "443" "80" (eq $url.scheme "https") }}
{{- $port := ternary (last (splitList ":" $host)) $schemePort (contains ":" $host) }}
# OTLP exporter (OTLP over HTTP: the URL's port, else its scheme's)
- ports:
    - port: {{ $port | int }}
      protocol: TCP
{{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* `nats.tls_*`, `nats.creds_file` and `nats.nkey_seed_file` from
externalNats.tls and externalNats.credentials, for both workloads. */}}
{{- define "sse-cluster.natsClientEnv" -}}
{{- with .Values.externalNats.tls }}
{{- if .secretName }}
{{- if .caKey }}
- name: SSE_NATS__TLS_CA_FILE
  value: {{ printf "/etc/sse-cluster/nats-tls/%s" .caKey | quote }}
{{- end }}
{{- if .clientCertificate }}
- name: SSE_NATS__TLS_CERT_FILE
  value: "/etc/sse-cluster/nats-tls/tls.crt"
- name: SSE_NATS__TLS_KEY_FILE
  value: "/etc/sse-cluster/nats-tls/tls.key"
{{- end }}
{{- if not (or .caKey .clientCertificate) }}
{{- fail "externalNats.tls.secretName: set caKey, clientCertificate or both" }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.externalNats.credentials }}
{{- if .secretName }}
{{- if and .credsKey .nkeySeedKey }}
{{- fail "externalNats.credentials: set credsKey or nkeySeedKey, not both" }}
{{- else if .credsKey }}
- name: SSE_NATS__CREDS_FILE
  value: {{ printf "/etc/sse-cluster/nats-credentials/%s" .credsKey | quote }}
{{- else if .nkeySeedKey }}
- name: SSE_NATS__NKEY_SEED_FILE
  value: {{ printf "/etc/sse-cluster/nats-credentials/%s" .nkeySeedKey | quote }}
{{- else }}
{{- fail "externalNats.credentials.secretName: set credsKey or nkeySeedKey" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The NATS client Secrets' mounts, for both workloads. */}}
{{- define "sse-cluster.natsClientMounts" -}}
{{- if .Values.externalNats.tls.secretName }}
- name: nats-tls
  mountPath: /etc/sse-cluster/nats-tls
  readOnly: true
{{- end }}
{{- if .Values.externalNats.credentials.secretName }}
- name: nats-credentials
  mountPath: /etc/sse-cluster/nats-credentials
  readOnly: true
{{- end }}
{{- end }}

{{/* The NATS client Secrets' volumes, for both workloads. */}}
{{- define "sse-cluster.natsClientVolumes" -}}
{{- with .Values.externalNats.tls.secretName }}
- name: nats-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.externalNats.credentials.secretName }}
- name: nats-credentials
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}
