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

{{/*
The keys every api replica must share (the viewer's EHR-token sealing key, the review app's sign-in
sealing key): list items to append to "veritrace.env"'s env, from the one Secret.
*/}}
{{- define "veritrace.apiSessionKeysEnv" -}}
- name: VERITRACE_VIEWER_SESSION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "veritrace.secretName" . }}
      key: viewer-session-key
- name: VERITRACE_REVIEW_LOGIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "veritrace.secretName" . }}
      key: review-login-key
{{- end -}}

{{/*
The spool key, for every pod that reads or writes the spool. The Secret item is mode 0400, but with the
pod's fsGroup the kubelet adds group read to Secret files (kubernetes/kubernetes#57923), and the spool
refuses a key file its group may read. So an init container copies it, mode 0400 and owned by the pod's
user, into a memory-backed emptyDir, and the process reads that copy.
*/}}
{{- define "veritrace.spoolKeyDir" -}}/run/veritrace/spool-key{{- end -}}

{{- define "veritrace.spoolKeyEnv" -}}
- name: VERITRACE_SPOOL_KEY_FILE
  value: {{ include "veritrace.spoolKeyDir" . }}/spool.key
{{- end -}}

{{/* Call with (dict "root" $ "image" <the pod's image>). */}}
{{- define "veritrace.spoolKeyInit" -}}
- name: spool-key
  image: {{ .image }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["install", "-m", "0400", "/run/veritrace/spool-key-secret/spool.key", "{{ include "veritrace.spoolKeyDir" .root }}/spool.key"]
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - name: spool-key-secret
      mountPath: /run/veritrace/spool-key-secret
      readOnly: true
    - name: spool-key
      mountPath: {{ include "veritrace.spoolKeyDir" .root }}
{{- end -}}

{{- define "veritrace.spoolKeyVolumes" -}}
- name: spool-key-secret
  secret:
    secretName: {{ include "veritrace.secretName" . }}
    defaultMode: 0400
    items:
      - key: spool.key
        path: spool.key
        mode: 0400
- name: spool-key
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end -}}

{{- define "veritrace.spoolKeyMounts" -}}
- name: spool-key
  mountPath: {{ include "veritrace.spoolKeyDir" . }}
  readOnly: true
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
