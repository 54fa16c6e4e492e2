{{/*
Names. Every resource is `<fullname>-<component>`; engines add the model: `<fullname>-engine-<model>`.
*/}}
{{- define "pagoda.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pagoda.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pagoda.engine.fullname" -}}
{{- printf "%s-engine-%s" (include "pagoda.fullname" .ctx) .model.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The headless Service of all engines of the release: the router discovers engines through it. */}}
{{- define "pagoda.engine.serviceName" -}}
{{- printf "%s-engine" (include "pagoda.fullname" .) }}
{{- end }}

{{- define "pagoda.router.fullname" -}}
{{- printf "%s-router" (include "pagoda.fullname" .) }}
{{- end }}

{{- define "pagoda.tokenizer.fullname" -}}
{{- printf "%s-tokenizer" (include "pagoda.fullname" .) }}
{{- end }}

{{- define "pagoda.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pagoda.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pagoda.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}
{{- default (include "pagoda.router.fullname" .) .Values.router.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.router.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pagoda.apiKeys.secretName" -}}
{{- default (printf "%s-api-keys" (include "pagoda.fullname" .)) .Values.router.apiKeys.existingSecret }}
{{- end }}

{{- define "pagoda.servedModelName" -}}
{{- default .name .servedModelName }}
{{- end }}

{{/*
Labels. Call with (dict "ctx" $ "component" "engine"); engines also pass "model".
Selector labels never change after install (a Deployment's selector is immutable).
*/}}
{{- define "pagoda.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pagoda.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .model }}
pagoda.dev/model: {{ .name }}
{{- end }}
{{- end }}

{{- define "pagoda.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pagoda.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: pagoda
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The router's --k8s-label-selector: every engine pod of this release, whatever its model. */}}
{{- define "pagoda.engine.discoverySelector" -}}
{{- $labels := include "pagoda.selectorLabels" (dict "ctx" . "component" "engine") | fromYaml }}
{{- $pairs := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* An image reference; call with (dict "ctx" $ "image" .Values.images.engine). */}}
{{- define "pagoda.image" -}}
{{- $repo := .image.repository }}
{{- with .ctx.Values.images.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
topologySpreadConstraints with each constraint's missing labelSelector set to the workload's pods.
Call with (dict "constraints" list "selector" (selector labels as a map)).
*/}}
{{- define "pagoda.topologySpread" -}}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $.selector) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Environment every Pagoda container gets. */}}
{{- define "pagoda.commonEnv" -}}
- name: HOME
  value: /home/pagoda
{{- with .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The writable emptyDirs that let the root filesystem stay read-only. */}}
{{- define "pagoda.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end }}

{{- define "pagoda.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/pagoda
{{- end }}

{{/*
Model sources: where an engine (or a tokenizer) finds a model. Call each with
(dict "ctx" $ "source" <source> "name" <model name>); volumes are mounted at /models/<name>.
  builtin       the SmolLM2 model inside the image; no volume
  pvc           an existing claim, mounted read-only (ReadOnlyMany/ReadWriteMany for pods on several nodes)
  hostPath      a folder already on every node
  image         an init container copies a folder out of an image into an emptyDir
  objectStore   an init container runs `aws s3 sync` into an emptyDir
  huggingFace   a Job downloads the repo at its pinned revision into a claim once (weights-download.yaml);
                pods mount the claim read-only and an init container waits for the Job's marker file
  imageVolume   the image itself is mounted read-only (Kubernetes >= 1.31 `image` volumes): no copy
*/}}
{{- define "pagoda.source.hfDir" -}}
{{- printf "%s/%s" .repo .revision }}
{{- end }}

{{- define "pagoda.source.path" -}}
{{- $src := .source }}
{{- if ne $src.type "builtin" }}
{{- $dir := printf "/models/%s" .name }}
{{- if eq $src.type "huggingFace" }}
{{- $dir = printf "%s/%s" $dir (include "pagoda.source.hfDir" $src.huggingFace) }}
{{- else if eq $src.type "imageVolume" }}
{{- $dir = printf "%s%s" $dir (dig "path" "/model" $src.image | trimSuffix "/") }}
{{- end }}
{{- if $src.file }}{{ printf "%s/%s" $dir $src.file }}{{ else }}{{ $dir }}{{ end }}
{{- end }}
{{- end }}

{{/* The claim a huggingFace source downloads into: its own existing claim, else the chart's. */}}
{{- define "pagoda.weights.claimName" -}}
{{- $storage := dig "storage" (dict) .source.huggingFace }}
{{- default (printf "%s-weights-%s" (include "pagoda.fullname" .ctx) .name | trunc 63 | trimSuffix "-") $storage.existingClaim }}
{{- end }}

{{- define "pagoda.source.volumes" -}}
{{- $src := .source }}
{{- if eq $src.type "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ $src.pvc.claimName }}
    readOnly: true
{{- else if eq $src.type "huggingFace" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ include "pagoda.weights.claimName" . }}
    readOnly: true
{{- else if eq $src.type "imageVolume" }}
{{- if not (.ctx.Capabilities.KubeVersion.Version | semverCompare ">=1.31.0-0") }}
{{- fail (printf "models: %s: source.type imageVolume needs Kubernetes >= 1.31 (image volumes, feature gate ImageVolume); this cluster is %s" .name .ctx.Capabilities.KubeVersion.Version) }}
{{- end }}
- name: model
  image:
    reference: {{ include "pagoda.source.imageRef" $src.image }}
    pullPolicy: {{ dig "pullPolicy" "IfNotPresent" $src.image }}
{{- else if eq $src.type "hostPath" }}
- name: model
  hostPath:
    path: {{ $src.hostPath.path }}
    type: {{ dig "type" "Directory" $src.hostPath }}
{{- else if or (eq $src.type "image") (eq $src.type "objectStore") }}
- name: model
  emptyDir:
    sizeLimit: {{ default .ctx.Values.engine.weightsSizeLimit $src.sizeLimit }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest pins it. */}}
{{- define "pagoda.source.imageRef" -}}
{{- if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository (default "latest" .tag) }}{{ end }}
{{- end }}

{{- define "pagoda.source.mounts" -}}
{{- $src := .source }}
{{- if ne $src.type "builtin" }}
- name: model
  mountPath: /models/{{ .name }}
  readOnly: true
  {{- if and (eq $src.type "pvc") $src.pvc.subPath }}
  subPath: {{ $src.pvc.subPath }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
The init container that makes the weights ready, if the source needs one. Also takes "image" (the
image of the pod's own container, which waits for a download) and "tokenizerOnly" (an objectStore
sync for a tokenizer pod fetches the tokenizer's files, not the weights).
*/}}
{{- define "pagoda.source.initContainers" -}}
{{- $src := .source }}
{{- $dst := printf "/models/%s" .name }}
{{- $security := .ctx.Values.security.containerSecurityContext }}
{{- if eq $src.type "image" }}
- name: copy-weights
  image: {{ include "pagoda.source.imageRef" $src.image }}
  imagePullPolicy: {{ dig "pullPolicy" "IfNotPresent" $src.image }}
  # `cp -R src/. dst/` copies the folder's contents with GNU or busybox cp: no shell needed.
  command: ["cp", "-R", {{ printf "%s/." (dig "path" "/model" $src.image) | quote }}, {{ printf "%s/" $dst | quote }}]
  securityContext:
    {{- toYaml $security | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: {{ $dst }}
{{- else if eq $src.type "huggingFace" }}
{{- $marker := printf "%s/.pagoda-complete" (include "pagoda.source.path" (dict "source" (omit $src "file") "name" .name)) }}
- name: wait-weights
  image: {{ .image }}
  imagePullPolicy: IfNotPresent
  # The weights Job writes the marker last; the claim is read-only here.
  command: ["sh", "-c", "until [ -f \"$MARKER\" ]; do echo \"waiting for $MARKER: the weights Job is downloading\"; sleep 10; done"]
  env:
    - name: MARKER
      value: {{ $marker | quote }}
  securityContext:
    {{- toYaml $security | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: {{ $dst }}
      readOnly: true
{{- else if eq $src.type "objectStore" }}
{{- $store := $src.objectStore }}
{{- $image := dig "image" (dict) $store }}
- name: fetch-weights
  image: {{ printf "%s:%s" (dig "repository" "amazon/aws-cli" $image) (dig "tag" "2.22.0" $image) }}
  imagePullPolicy: IfNotPresent
  {{- if $store.command }}
  command:
    {{- toYaml $store.command | nindent 4 }}
  {{- else }}
  command:
    - aws
    - s3
    - sync
    - --no-progress
    {{- with $store.endpointUrl }}
    - --endpoint-url={{ . }}
    {{- end }}
    {{- if and .tokenizerOnly (not $src.file) }}
    {{- /* A tokenizer reads a few MB of the folder: leave the weights in the store. */}}
    - --exclude=*
    {{- range list "*.json" "*.jinja" "tokenizer.model" "*.tiktoken" "*.txt" }}
    - --include={{ . }}
    {{- end }}
    {{- end }}
    - {{ $store.uri | quote }}
    - {{ $dst | quote }}
  {{- end }}
  env:
    - name: HOME
      value: /tmp
    - name: DEST
      value: {{ $dst | quote }}
  {{- with $store.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $security | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: {{ $dst }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* Seconds from the start of termination to SIGKILL for an engine pod. */}}
{{- define "pagoda.engine.terminationGracePeriodSeconds" -}}
{{- $e := .Values.engine }}
{{- if gt (int $e.terminationGracePeriodSeconds) 0 }}
{{- $e.terminationGracePeriodSeconds }}
{{- else }}
{{- add $e.preStopSleepSeconds $e.shutdownGracePeriodSeconds 15 }}
{{- end }}
{{- end }}

{{/* The source a model's tokenizer loads: the model's `tokenizerSource`, else its `source`. */}}
{{- define "pagoda.tokenizer.source" -}}
{{- toYaml (default .source .tokenizerSource) }}
{{- end }}

{{/* A model's tokenizer Deployment and Service: `<fullname>-tokenizer-<model>`. */}}
{{- define "pagoda.tokenizer.modelFullname" -}}
{{- printf "%s-tokenizer-%s" (include "pagoda.fullname" .ctx) .model.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The rollout deadline of an engine Deployment: longer than the start-up probe's window (loading a
large model may take all of it), plus time to schedule, pull the image and run the init containers.
*/}}
{{- define "pagoda.engine.progressDeadlineSeconds" -}}
{{- $e := .Values.engine }}
{{- if gt (int $e.progressDeadlineSeconds) 0 }}
{{- $e.progressDeadlineSeconds }}
{{- else }}
{{- add (mul $e.probes.startup.periodSeconds $e.probes.startup.failureThreshold) 600 }}
{{- end }}
{{- end }}

{{/*
TLS on the gRPC hops (tls.grpc): engines and the tokenizer serve the Secret's tls.crt (requiring client
certificates signed by its ca.crt with `mutual`) and answer kubelet probes on a plaintext health-only port;
the router trusts ca.crt and presents tls.crt with `mutual`.
*/}}
{{- define "pagoda.grpcTls.check" -}}
{{- $g := .Values.tls.grpc }}
{{- if and $g.enabled (not $g.secretName) }}
{{- fail "tls.grpc.enabled needs tls.grpc.secretName: a Secret with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- if and $g.enabled (not $g.serverName) }}
{{- fail "tls.grpc.enabled needs tls.grpc.serverName: the DNS name the certificate carries" }}
{{- end }}
{{- end }}

{{- define "pagoda.grpcTls.serverArgs" -}}
{{- $g := .Values.tls.grpc }}
{{- if $g.enabled }}
- --tls-cert=/secrets/grpc-tls/tls.crt
- --tls-key=/secrets/grpc-tls/tls.key
{{- if $g.mutual }}
- --tls-client-ca=/secrets/grpc-tls/ca.crt
{{- end }}
- --health-port={{ $g.healthPort }}
{{- end }}
{{- end }}

{{- define "pagoda.grpcTls.clientArgs" -}}
{{- $g := .Values.tls.grpc }}
{{- if $g.enabled }}
- --grpc-tls-ca=/secrets/grpc-tls/ca.crt
{{- if $g.mutual }}
- --grpc-tls-cert=/secrets/grpc-tls/tls.crt
- --grpc-tls-key=/secrets/grpc-tls/tls.key
{{- end }}
- --grpc-tls-server-name={{ $g.serverName }}
{{- end }}
{{- end }}

{{/* The port kubelet's gRPC probes ask: the service port, or the plaintext health port under TLS. */}}
{{- define "pagoda.grpcProbePort" -}}
{{- if .ctx.Values.tls.grpc.enabled }}{{ .ctx.Values.tls.grpc.healthPort }}{{ else }}{{ .port }}{{ end }}
{{- end }}

{{- define "pagoda.grpcTls.mount" -}}
{{- if .Values.tls.grpc.enabled }}
- name: grpc-tls
  mountPath: /secrets/grpc-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "pagoda.grpcTls.volume" -}}
{{- if .Values.tls.grpc.enabled }}
- name: grpc-tls
  secret:
    secretName: {{ .Values.tls.grpc.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/*
The shared gRPC token (pagoda/grpc_auth.py): engines and tokenizer accept the tokens of the file, the router
sends its first line. Health stays open, so kubelet's probes need none.
*/}}
{{- define "pagoda.grpcAuth.secretName" -}}
{{- .Values.grpcAuth.existingSecret | default (printf "%s-grpc-token" (include "pagoda.fullname" .)) }}
{{- end }}

{{- define "pagoda.grpcAuth.args" -}}
{{- if .Values.grpcAuth.enabled }}
- --grpc-token-file=/secrets/grpc-token/{{ .Values.grpcAuth.secretKey }}
{{- end }}
{{- end }}

{{- define "pagoda.grpcAuth.mount" -}}
{{- if .Values.grpcAuth.enabled }}
- name: grpc-token
  mountPath: /secrets/grpc-token
  readOnly: true
{{- end }}
{{- end }}

{{- define "pagoda.grpcAuth.volume" -}}
{{- if .Values.grpcAuth.enabled }}
- name: grpc-token
  secret:
    secretName: {{ include "pagoda.grpcAuth.secretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}
