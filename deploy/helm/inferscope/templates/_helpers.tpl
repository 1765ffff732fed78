{{/* Chart name. */}}
{{- define "inferscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name if it already contains the chart name. */}}
{{- define "inferscope.fullname" -}}
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

{{- define "inferscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inferscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "inferscope.labels" -}}
helm.sh/chart: {{ include "inferscope.chart" . }}
{{ include "inferscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "inferscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inferscope.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "inferscope.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Arguments of `inferscope run`, one YAML list item per line. */}}
{{- define "inferscope.args" -}}
{{- $i := .Values.inferscope -}}
{{- $o := .Values.otlp -}}
- run
- {{ printf "--prometheus-listen=0.0.0.0:%d" (int .Values.metrics.port) | quote }}
- {{ printf "--discover-interval=%v" $i.discoverInterval | quote }}
{{- range $i.matches }}
- {{ printf "--match=%s" . | quote }}
{{- end }}
- {{ printf "--tracing-level=%d" (int $i.tracingLevel) | quote }}
- {{ printf "--max-span-events=%d" (int $i.maxSpanEvents) | quote }}
- {{ printf "--max-models=%d" (int $i.maxModels) | quote }}
- {{ printf "--identity-labels=%s" $i.identityLabels | quote }}
- {{ printf "--ring-buffer-size=%d" (int64 $i.ringBufferSize) | quote }}
- {{ printf "--idle-timeout=%v" $i.idleTimeout | quote }}
{{- if $i.vllmMetrics }}
- "--vllm-metrics"
{{- end }}
{{- if $i.captureContent }}
- "--capture-content"
- {{ printf "--max-content-bytes=%d" (int $i.maxContentBytes) | quote }}
{{- end }}
{{- if $i.quiet }}
- "--quiet"
{{- end }}
{{- with $i.python }}
{{- if .timers }}
- {{ printf "--python-timers=%s" .timers | quote }}
{{- if .timersEvalUprobes }}
- "--python-timers-eval-uprobes"
{{- end }}
{{- end }}
- {{ printf "--engine-state-interval=%v" .engineStateInterval | quote }}
{{- if .profileRate }}
- {{ printf "--python-profile-rate=%d" (int .profileRate) | quote }}
- {{ printf "--python-profile-window=%v" .profileWindow | quote }}
{{- end }}
{{- end }}
{{- if $o.endpoint }}
- {{ printf "--otlp-endpoint=%s" $o.endpoint | quote }}
- {{ printf "--otlp-protocol=%s" $o.protocol | quote }}
- {{ printf "--otlp-metrics-interval=%v" $o.metricsInterval | quote }}
- {{ printf "--service-name=%s" $o.serviceName | quote }}
{{- if not $o.traces }}
- "--no-otlp-traces"
{{- end }}
{{- if not $o.metrics }}
- "--no-otlp-metrics"
{{- end }}
{{- end }}
{{- if $i.kubernetesApi }}
- "--kube-api=auto"
{{- with $i.podLabels }}
- {{ printf "--pod-labels=%s" (join "," .) | quote }}
{{- end }}
{{- else }}
- "--kube-api=off"
{{- end }}
{{- with $i.controlToken.secretName }}
- {{ printf "--control-token-file=/etc/inferscope/control-token/%s" $i.controlToken.key | quote }}
{{- end }}
{{- if $i.control }}
- "--control-socket=/run/inferscope/control.sock"
{{- else }}
- "--control-socket=off"
{{- end }}
{{- range $i.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* OTEL_RESOURCE_ATTRIBUTES value ("" when there is none). */}}
{{- define "inferscope.resourceAttributes" -}}
{{- $attrs := list -}}
{{- if .Values.otlp.kubernetesResourceAttributes -}}
{{- $attrs = append $attrs "k8s.node.name=$(K8S_NODE_NAME),service.instance.id=$(K8S_NAMESPACE)/$(K8S_POD_NAME)" -}}
{{- end -}}
{{- if .Values.otlp.extraResourceAttributes -}}
{{- $attrs = append $attrs .Values.otlp.extraResourceAttributes -}}
{{- end -}}
{{- join "," $attrs -}}
{{- end }}
