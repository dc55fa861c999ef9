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

{{- /* What operators set per component (.Values.injector / .Values.exchange): pod labels and
annotations, scheduling, priority. Call with (dict "name" NAME "c" COMPONENT-VALUES "root" $). */ -}}
{{- define "flyte-auth.podMeta" -}}
labels: {{- include "flyte-auth.labels" .name | nindent 2 }}
  {{- with .c.podLabels }}{{ toYaml . | nindent 2 }}{{ end }}
{{- with .c.podAnnotations }}
annotations: {{- toYaml . | nindent 2 }}
{{- end }}
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
{{- if .c.affinity }}
affinity: {{- toYaml .c.affinity | nindent 2 }}
{{- else }}
affinity: {{- include "flyte-auth.antiAffinity" .name | nindent 2 }}
{{- end }}
{{- end }}
