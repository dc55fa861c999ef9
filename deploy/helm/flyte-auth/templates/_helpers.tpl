{{- define "flyte-auth.labels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: flyte-auth
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
          matchLabels: {app.kubernetes.io/name: {{ . }}}
{{- end }}

{{- define "flyte-auth.serverImage" -}}
image: {{ .Values.image.server.repository }}:{{ .Values.image.server.tag }}
imagePullPolicy: {{ .Values.image.server.pullPolicy }}
{{- end }}

{{- /* FlyteAdmin picks the token audience by the host a task dials (flyteAdmin.grpcEndpoint):
the authorizedUris entry with that hostname, else its first entry. Refuse an install where
no audience has that hostname: every task's token would be refused. */ -}}
{{- define "flyte-auth.checkAudiences" -}}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.flyteAdmin.grpcEndpoint "" -}}
{{- $found := false -}}
{{- range .Values.flyteAdmin.audiences -}}
{{- if eq (urlParse .).hostname $host -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "flyteAdmin.audiences has no URL with host %q, the host tasks dial (flyteAdmin.grpcEndpoint): FlyteAdmin would expect its first authorizedUris entry as the audience and refuse every task's token. Add http://%s:80 (as listed in FlyteAdmin's authorizedUris) to flyteAdmin.audiences" $host $host) -}}
{{- end -}}
{{- end }}
