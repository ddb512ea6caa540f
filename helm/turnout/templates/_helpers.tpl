{{/* Names, labels and the pieces several templates share. */}}

{{- define "turnout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.fullname" -}}
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

{{- define "turnout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "turnout.labels" -}}
helm.sh/chart: {{ include "turnout.chart" . }}
app.kubernetes.io/name: {{ include "turnout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: turnout
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "gateway"). */}}
{{- define "turnout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "turnout.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "turnout.componentLabels" -}}
{{ include "turnout.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "turnout.gateway.fullname" -}}
{{- printf "%s-gateway" (include "turnout.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "turnout.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Deployment and headless Service of one model: include with (dict "root" $ "model" $model). Never
truncated: two models cut to the same name would share a Service, so a name too long is refused. */}}
{{- define "turnout.vllm.fullname" -}}
{{- $name := printf "%s-vllm-%s" (include "turnout.fullname" .root) .model.name }}
{{- if gt (len $name) 63 }}
{{- fail (printf "vllm.models: %q makes the name %q, longer than Kubernetes' 63 characters: shorten the model's name (or fullnameOverride)" .model.name $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{- define "turnout.vllm.selectorLabels" -}}
{{ include "turnout.selectorLabels" (dict "root" .root "component" "vllm") }}
turnout/model: {{ .model.name }}
{{- end }}

{{/* The model entry the gateway serves: gateway.model, else the first one. */}}
{{- define "turnout.gateway.modelEntry" -}}
{{- $wanted := .Values.gateway.model | default (first .Values.vllm.models).name }}
{{- $found := dict }}
{{- range .Values.vllm.models }}
{{- if eq .name $wanted }}{{- $found = . }}{{- end }}
{{- end }}
{{- if not $found }}
{{- $names := list }}{{- range .Values.vllm.models }}{{- $names = append $names .name }}{{- end }}
{{- fail (printf "gateway.model: %q is not one of vllm.models[].name (%s)" $wanted (join ", " $names)) }}
{{- end }}
{{- toJson $found }}
{{- end }}

{{/* Several gateways share the vLLM replicas: only vLLM's own LRU may evict adapters then. */}}
{{- define "turnout.gateway.shared" -}}
{{- if or .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.replicas) 1) .Values.inferencePool.enabled }}true{{- end }}
{{- end }}

{{- define "turnout.gateway.eviction" -}}
{{- $shared := include "turnout.gateway.shared" . }}
{{- $asked := .Values.gateway.fleet.eviction }}
{{- if and $shared (eq $asked "gateway") }}
{{- fail "gateway.fleet.eviction: \"gateway\" lets each gateway unload adapters the others may be using; with several gateway replicas (replicas > 1, autoscaling or an InferencePool) use \"vllm\" or leave it empty" }}
{{- end }}
{{- $asked | default (ternary "vllm" "gateway" (eq $shared "true")) }}
{{- end }}

{{- define "turnout.qdrant.fullname" -}}
{{- $q := .Values.qdrant }}
{{- if $q.fullnameOverride }}
{{- $q.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "qdrant" $q.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "turnout.svcHost" -}}
{{- printf "%s.%s.svc.%s" .name .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{- define "turnout.redis.fullname" -}}
{{- printf "%s-redis" (include "turnout.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.adapterWriter.fullname" -}}
{{- printf "%s-adapter-writer" (include "turnout.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.adapterStore.claimName" -}}
{{- .Values.adapterStore.existingClaim | default (printf "%s-adapters" (include "turnout.fullname" .)) }}
{{- end }}

{{/* The adapter store's volume, and its sync init container when it comes from object storage. */}}
{{- define "turnout.adapterStore.volume" -}}
- name: adapters
{{- if .Values.adapterStore.sync.enabled }}
  emptyDir:
    sizeLimit: {{ .Values.adapterStore.sync.sizeLimit }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "turnout.adapterStore.claimName" . }}
    readOnly: true
{{- end }}
{{- end }}

{{- define "turnout.adapterStore.mount" -}}
- name: adapters
  mountPath: {{ .Values.adapterStore.mountPath }}
  readOnly: true
{{- end }}

{{/* One container running adapterStore.sync.command: include with (dict "root" $ "name" NAME "command" LIST
"extraEnv" LIST). */}}
{{- define "turnout.adapterStore.syncContainer" -}}
{{- $sync := .root.Values.adapterStore.sync }}
- name: {{ .name }}
  image: {{ printf "%s:%s" $sync.image.repository $sync.image.tag | quote }}
  imagePullPolicy: {{ $sync.image.pullPolicy }}
  command: {{- toYaml .command | nindent 4 }}
  env:
    - name: STORE
      value: {{ .root.Values.adapterStore.mountPath | quote }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $sync.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $sync.resources }}
  resources: {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
  volumeMounts:
    - name: adapters
      mountPath: {{ .root.Values.adapterStore.mountPath }}
{{- end }}

{{/* The first sync, before the server starts. */}}
{{- define "turnout.adapterStore.initContainers" -}}
{{- $sync := .Values.adapterStore.sync }}
{{- if $sync.enabled }}
{{- include "turnout.adapterStore.syncContainer" (dict "root" . "name" "adapter-sync" "command" $sync.command) }}
{{- end }}
{{- end }}

{{/* The same sync again every sync.intervalSeconds beside the server, so that new versions and moved pointers
arrive without a restart. The command runs in a /bin/sh loop (the sync image needs a shell); a failed run is
logged and tried again at the next interval, and SIGTERM ends the loop at once. */}}
{{- define "turnout.adapterStore.sidecars" -}}
{{- $sync := .Values.adapterStore.sync }}
{{- if $sync.enabled }}
{{- $loop := `trap 'exit 0' TERM INT
while :; do
  sleep "$SYNC_INTERVAL_SECONDS" & wait $!
  "$@" || echo "adapter sync failed (exit status $?); trying again in ${SYNC_INTERVAL_SECONDS}s" >&2
done` }}
{{- $command := concat (list "/bin/sh" "-c" $loop "adapter-sync") $sync.command }}
{{- $env := list (dict "name" "SYNC_INTERVAL_SECONDS" "value" (toString (int ($sync.intervalSeconds | default 30)))) }}
{{- include "turnout.adapterStore.syncContainer" (dict "root" . "name" "adapter-resync" "command" $command "extraEnv" $env) }}
{{- end }}
{{- end }}

{{/* A secret reaching a container as an environment variable, by reference only. */}}
{{- define "turnout.secretEnv" -}}
{{- if .ref.existingSecret }}
name: {{ .env }}
valueFrom:
  secretKeyRef:
    name: {{ .ref.existingSecret }}
    key: {{ .ref.key }}
{{- end }}
{{- end }}

{{/* Where the gateway finds the vLLM replicas of its model: the InferencePool's address, else the model's
headless Service by DNS. */}}
{{- define "turnout.gateway.vllmLocation" -}}
{{- $model := include "turnout.gateway.modelEntry" . | fromJson }}
{{- if .Values.inferencePool.enabled }}
url: {{ required "inferencePool.url is required with inferencePool.enabled: the address of the inference Gateway that routes to the pool" .Values.inferencePool.url }}
{{- else }}
discovery:
  dns: {{ include "turnout.svcHost" (dict "root" . "name" (include "turnout.vllm.fullname" (dict "root" . "model" $model))) }}
  port: {{ .Values.vllm.port }}
  scheme: http
  interval_s: {{ .Values.gateway.fleet.discoveryIntervalSeconds }}
{{- end }}
{{- end }}

{{/* turnout.yaml: gateway.config, with the keys the chart owns written over it. */}}
{{- define "turnout.gateway.config" -}}
{{- $model := include "turnout.gateway.modelEntry" . | fromJson }}
{{- $config := deepCopy (.Values.gateway.config | default dict) }}
{{- $server := merge (dict "host" "0.0.0.0" "port" (int .Values.gateway.port)) (get $config "server" | default dict) }}
{{- $vllm := merge (dict
      "model" ($model.servedName | default $model.name)
      "max_lora_rank" (int $model.maxLoraRank)
      "max_resident" (int $model.maxCpuLoras)
      "health" .Values.gateway.fleet.health
      "eviction" (include "turnout.gateway.eviction" .)
    ) (include "turnout.gateway.vllmLocation" . | fromYaml) (get $config "vllm" | default dict) }}
{{- $baseModel := deepCopy (get $config "base_model" | default dict) }}
{{- $aliases := get $baseModel "aliases" | default list }}
{{- if not (has $model.source $aliases) }}{{- $aliases = append $aliases $model.source }}{{- end }}
{{- $_ := set $baseModel "aliases" $aliases }}
{{- /* Every adapter is served from the store: the version its store name (default: its own) points at,
or a fixed version. */}}
{{- $adapters := dict }}
{{- range $name, $adapter := .Values.adapters }}
{{- $spec := deepCopy ($adapter | default dict) }}
{{- $_ := set $spec "store" (get $spec "store" | default $name) }}
{{- if not (get $spec "version") }}{{- $_ := unset $spec "version" }}{{- end }}
{{- $_ := set $adapters $name $spec }}
{{- end }}
{{- $adapterStore := dict
      "path" .Values.adapterStore.mountPath
      "watch_interval_s" (.Values.adapterStore.watchIntervalSeconds | default 2) }}
{{- $rag := deepCopy (get $config "rag" | default dict) }}
{{- $store := dict }}
{{- if .Values.qdrant.enabled }}
{{- $_ := set $store "url" (printf "http://%s:6333" (include "turnout.svcHost" (dict "root" . "name" (include "turnout.qdrant.fullname" .)))) }}
{{- else if .Values.rag.externalUrl }}
{{- $_ := set $store "url" .Values.rag.externalUrl }}
{{- else }}
{{- $_ := set $store "path" "/var/lib/turnout/qdrant" }}
{{- end }}
{{- $_ := set $rag "store" $store }}
{{- $_ := set $config "server" $server }}
{{- $_ := set $config "vllm" $vllm }}
{{- $_ := set $config "base_model" $baseModel }}
{{- $_ := set $config "adapters" $adapters }}
{{- $_ := set $config "adapter_store" $adapterStore }}
{{- $_ := set $config "rag" $rag }}
{{- toYaml $config }}
{{- end }}

{{/* The TCP port of a URL: its own, else the scheme's. */}}
{{- define "turnout.urlPort" -}}
{{- $url := urlParse . }}
{{- $port := get (dict "https" "443" "http" "80" "redis" "6379" "rediss" "6379") $url.scheme | default "80" }}
{{- if regexMatch ":[0-9]+$" $url.host }}{{- $port = last (splitList ":" $url.host) }}{{- end }}
{{- $port }}
{{- end }}
