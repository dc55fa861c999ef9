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
