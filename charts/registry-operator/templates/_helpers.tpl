{{/* Name of the chart, shortened to a DNS label. */}}
{{- define "registry-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: <release>-<chart>, or the release alone when it already holds the chart name. */}}
{{- define "registry-operator.fullname" -}}
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

{{- define "registry-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them across upgrades. */}}
{{- define "registry-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "registry-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The selector labels as `k=v,k=v`: how the operator's NetworkPolicies recognise its pods. */}}
{{- define "registry-operator.selectorLabelPairs" -}}
app.kubernetes.io/name={{ include "registry-operator.name" . }},app.kubernetes.io/instance={{ .Release.Name }}
{{- end }}

{{- define "registry-operator.labels" -}}
helm.sh/chart: {{ include "registry-operator.chart" . }}
{{ include "registry-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: sofaregistry
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "registry-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "registry-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "registry-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The rules the operator needs on the resources it reconciles, wherever it watches them.
tests/deploy/test_rbac.py checks them against the API calls in the operator's code. */}}
{{- define "registry-operator.reconcileRules" -}}
# Watches RegistryClusters and writes their status. `get` is granted because the Role the
# operator writes for registry nodes grants it (Kubernetes lets one grant only what one holds).
- apiGroups: ["sofaregistry.dev"]
  resources: ["registryclusters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["sofaregistry.dev"]
  resources: ["registryclusters/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["sofaregistry.dev"]
  resources: ["registryclusters/finalizers"]
  verbs: ["update"]
# Owned objects are written with server-side apply: patch, and create when missing.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["create", "patch"]
# The node ConfigMap; get/list/watch because the nodes' Role grants them.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create", "patch"]
# Pod readiness and addresses make the membership.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The API token named by spec.tokenSecretRef; each cluster's credentials (the cluster token
# and the membership signing key), created once and repaired if edited (SECURITY.md).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# Each cluster's NetworkPolicy: internal ports only from its own pods and this operator.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
