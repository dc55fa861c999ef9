{{- /* Object names come from the release: "flyte-auth" for a release of that name (as the
kustomize manifests name them), else RELEASE-flyte-auth, or fullnameOverride. */ -}}
{{- define "flyte-auth.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- /* The standard labels; call with (dict "root" $ "component" "exchange"). */ -}}
{{- define "flyte-auth.labels" -}}
{{ include "flyte-auth.selector" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: flyte-auth
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{- define "flyte-auth.selector" -}}
app.kubernetes.io/name: {{ include "flyte-auth.fullname" .root }}-{{ .component }}
{{- end }}

{{- define "flyte-auth.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{- define "flyte-auth.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
{{- end }}

{{- define "flyte-auth.antiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels: {{- include "flyte-auth.selector" . | nindent 12 }}
{{- end }}

{{- /* An image reference: [image.registry/]repository, then @digest if set, else :tag (the
chart's appVersion when empty). Call with (dict "root" $ "image" .Values.image.server). */ -}}
{{- define "flyte-auth.imageRef" -}}
{{- $registry := .root.Values.image.registry -}}
{{- if $registry }}{{ trimSuffix "/" $registry }}/{{ end -}}
{{- .image.repository -}}
{{- if .image.digest }}@{{ .image.digest }}{{ else }}:{{ .image.tag | default .root.Chart.AppVersion }}{{ end -}}
{{- end }}

{{- define "flyte-auth.serverImage" -}}
image: {{ include "flyte-auth.imageRef" (dict "root" . "image" .Values.image.server) }}
imagePullPolicy: {{ .Values.image.server.pullPolicy }}
{{- end }}

{{- /* FlyteAdmin picks the token audience by the host a task dials (flyteAdmin.grpcEndpoint):
the authorizedUris entry with that hostname, else its first entry. Refuse an install where
no audience has that hostname: every task's token would be refused. */ -}}
{{- define "flyte-auth.checkAudiences" -}}
{{- if eq .Values.flyteAdmin.authServerType "External" -}}
{{- if not .Values.flyteAdmin.idpMetadataUrl -}}
{{- fail "flyteAdmin.idpMetadataUrl: required with flyteAdmin.authServerType External: the IdP's metadata document URL (e.g. https://keycloak.example/realms/flyte/.well-known/openid-configuration)" -}}
{{- end -}}
{{- else -}}
{{- range .Values.flyteAdmin.audiences -}}
{{- if not (regexMatch "^https?://[^/]+$" .) -}}
{{- fail (printf "flyteAdmin.audiences: %q is not an http(s)://HOST[:PORT] URL; with authServerType Self each is an entry of FlyteAdmin's auth.authorizedUris" .) -}}
{{- end -}}
{{- end -}}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.flyteAdmin.grpcEndpoint "" -}}
{{- $found := false -}}
{{- range .Values.flyteAdmin.audiences -}}
{{- if eq (urlParse .).hostname $host -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "flyteAdmin.audiences has no URL with host %q, the host tasks dial (flyteAdmin.grpcEndpoint): FlyteAdmin would expect its first authorizedUris entry as the audience and refuse every task's token. Add http://%s:80 (as listed in FlyteAdmin's authorizedUris) to flyteAdmin.audiences" $host $host) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{- /* What operators set per component (.Values.injector / .Values.exchange): pod labels and
annotations, scheduling, priority. Call with
(dict "root" $ "component" "exchange" "c" .Values.exchange "checksum" SHA). */ -}}
{{- define "flyte-auth.podMeta" -}}
labels: {{- include "flyte-auth.labels" . | nindent 2 }}
  {{- with .c.podLabels }}{{ toYaml . | nindent 2 }}{{ end }}
annotations:
  # A changed configuration rolls the pods (`helm upgrade`); the files are also reloaded.
  checksum/config: {{ .checksum }}
  {{- with .c.podAnnotations }}{{ toYaml . | nindent 2 }}{{ end }}
{{- end }}

{{- define "flyte-auth.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .c.affinity }}
affinity: {{- toYaml .c.affinity | nindent 2 }}
{{- else }}
affinity: {{- include "flyte-auth.antiAffinity" . | nindent 2 }}
{{- end }}
{{- end }}

{{- /* The injector's config file; its checksum rolls the injector's pods when it changes. */ -}}
{{- define "flyte-auth.injectorConfig" -}}
agent_image: {{ include "flyte-auth.imageRef" (dict "root" . "image" .Values.image.agent) }}
admin_endpoint: {{ .Values.flyteAdmin.grpcEndpoint }}
admin_insecure: {{ .Values.flyteAdmin.insecure }}
token_endpoint: {{ ternary "http" "https" .Values.exchange.plainHTTP }}://{{ include "flyte-auth.fullname" . }}-exchange.{{ .Release.Namespace }}.svc.cluster.local/oauth2/token
token_audience: {{ .Values.injector.tokenAudience }}
token_expiration: {{ .Values.injector.tokenExpiration }}
scopes: {{ .Values.injector.scopes }}
{{- with .Values.injector.allowedScopes }}
allowed_scopes: {{ toJson . }}
{{- end }}
agent_image_pull_policy: {{ .Values.injector.sidecar.imagePullPolicy }}
resources: {{ toJson .Values.injector.sidecar.resources }}
{{- with .Values.injector.sidecar.securityContext }}
security_context: {{ toJson . }}
{{- end }}
{{- with .Values.injector.allowedAudiences }}
allowed_audiences: {{ toJson . }}
{{- end }}
{{- if ne (int .Values.injector.tokenWait) 300 }}
token_wait: {{ .Values.injector.tokenWait }}
{{- end }}
{{- if ne (int .Values.injector.maxExpiration) 86400 }}
max_expiration: {{ .Values.injector.maxExpiration }}
{{- end }}
{{- if ne (int .Values.injector.probePort) 9787 }}
probe_port: {{ .Values.injector.probePort }}
{{- end }}
{{- end }}

{{- /* The exchange server's policy file: exchange.policy; with flyte2.enabled, a first rule
that gives Flyte 2's namespace its runs' launchers (the default policy refuses "flyte", where
Flyte 1 keeps its own components). */ -}}
{{- define "flyte-auth.exchangePolicy" -}}
{{- if .Values.flyte2.enabled -}}
{{- $doc := fromYaml .Values.exchange.policy -}}
{{- $rule := dict "name" "flyte2-actions" "namespaces" (list .Values.flyte2.namespace) "identity" "executor" "no_principal" "refuse" -}}
{{- toYaml (dict "rules" (prepend ($doc.rules | default list) $rule)) -}}
{{- else -}}
{{- .Values.exchange.policy -}}
{{- end -}}
{{- end }}

{{- /* What operators add to a server's container: the log settings when not the default,
then extraArgs; extraEnv. Call with (dict "root" $ "c" .Values.exchange). */ -}}
{{- define "flyte-auth.extraArgs" -}}
{{- if ne .root.Values.logLevel "info" }}
- --log-level={{ .root.Values.logLevel }}
{{- end }}
{{- if ne .root.Values.logFormat "json" }}
- --log-format={{ .root.Values.logFormat }}
{{- end }}
{{- range .c.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "flyte-auth.serviceAccountMeta" -}}
{{- with .c.serviceAccountAnnotations }}
annotations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
