{{/* Names, labels and the pieces every Veritrace pod shares. */}}

{{- define "veritrace.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "veritrace.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "api"). */}}
{{- define "veritrace.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "veritrace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "veritrace.gpuImage" -}}
{{- printf "%s:%s" .Values.gpuImage.repository (default (printf "%s-gpu" .Chart.AppVersion) .Values.gpuImage.tag) -}}
{{- end -}}

{{- define "veritrace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "veritrace.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "veritrace.secretName" -}}
{{- default (printf "%s-secrets" (include "veritrace.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "veritrace.configMapName" -}}
{{- printf "%s-config" (include "veritrace.fullname" .) -}}
{{- end -}}

{{- define "veritrace.issuersConfigMapName" -}}
{{- default (printf "%s-cds-issuers" (include "veritrace.fullname" .)) .Values.cdsIssuers.existingConfigMap -}}
{{- end -}}

{{- define "veritrace.spoolClaim" -}}
{{- default (printf "%s-spool" (include "veritrace.fullname" .)) .Values.persistence.spool.existingClaim -}}
{{- end -}}

{{- define "veritrace.anchorsClaim" -}}
{{- default (printf "%s-anchors" (include "veritrace.fullname" .)) .Values.persistence.anchors.existingClaim -}}
{{- end -}}

{{/* Settings from the ConfigMap, secrets from the Secret: the same VERITRACE_* every process reads. */}}
{{- define "veritrace.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "veritrace.configMapName" . }}
env:
  - name: VERITRACE_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "veritrace.secretName" . }}
        key: database-url
  - name: VERITRACE_BROKER_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "veritrace.secretName" . }}
        key: broker-url
{{- end -}}

{{/* The ledger's signing key and verifier key, laid out as audit/signing.py expects under $VERITRACE_HOME/keys. */}}
{{- define "veritrace.keysVolume" -}}
- name: ledger-keys
  secret:
    secretName: {{ include "veritrace.secretName" . }}
    defaultMode: 0440
    items:
      - key: ledger.key
        path: ledger.key
      - key: ledger.vkey
        path: keys/ledger.vkey
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "veritrace.keysMounts" -}}
- name: ledger-keys
  mountPath: /var/lib/veritrace/keys
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "veritrace.dataVolumes" -}}
- name: spool
  persistentVolumeClaim:
    claimName: {{ include "veritrace.spoolClaim" . }}
- name: anchors
  persistentVolumeClaim:
    claimName: {{ include "veritrace.anchorsClaim" . }}
{{- end -}}

{{- define "veritrace.dataMounts" -}}
- name: spool
  mountPath: /var/lib/veritrace/spool
- name: anchors
  mountPath: /var/lib/veritrace/anchor
{{- end -}}

{{/* The image's own probe (deploy/container/healthcheck.py): C-ECHO for dicom, Celery ping for workers. */}}
{{- define "veritrace.execProbe" -}}
exec:
  command: ["python", "/opt/veritrace/healthcheck.py"]
timeoutSeconds: 10
{{- end -}}

{{- define "veritrace.podDefaults" -}}
serviceAccountName: {{ include "veritrace.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
