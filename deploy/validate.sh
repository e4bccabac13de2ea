#!/usr/bin/env bash
# Offline validation of the deployment manifests; .ci/run runs it (and
# installs what it needs: kubectl, kubernetes-validate, promtool).
#
#   bash deploy/validate.sh [DEPLOY_DIR]     (default: the directory of this script)
#
# - Each overlay in DEPLOY_DIR/kubernetes/overlays is rendered with
#   `kubectl kustomize` (rendering only: no cluster is configured or contacted),
#   and every rendered object is validated by kubernetes-validate --strict
#   against the Kubernetes API schemas of K8S_VERSIONS: an unknown or misspelt
#   field, a wrong type or a missing required field fails, and so does an
#   object of a kind that has no schema there.
# - DEPLOY_DIR/observability/prometheus-rules.yaml is a plain Prometheus rule
#   file (not a PrometheusRule object, so no Kubernetes schema applies): it is
#   checked with `promtool check rules` (rule file structure, PromQL, durations,
#   templates).
# Every problem is printed with the object's kind/name (or file); the exit
# status is non-zero if there was any.
set -euo pipefail

deploy=$(cd "${1:-$(dirname "$0")}" && pwd)
# The newest Kubernetes version the pinned kubernetes-validate (.ci/run) knows.
K8S_VERSIONS=${K8S_VERSIONS:-1.37.0}
PYTHON=${PYTHON:-python3}
PROMTOOL=${PROMTOOL:-promtool}

failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=1
}

for tool in kubectl "$PROMTOOL"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is not installed (.ci/run installs it)" >&2; exit 2; }
done
"$PYTHON" -m kubernetes_validate --version >/dev/null 2>&1 ||
    { echo "error: kubernetes-validate is not installed for $PYTHON (.ci/run installs it)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version_args=()
for v in $K8S_VERSIONS; do version_args+=(-k "$v"); done

overlays=("$deploy"/kubernetes/overlays/*/)
[ -d "${overlays[0]}" ] || { echo "error: no overlays in $deploy/kubernetes/overlays" >&2; exit 2; }

for dir in "${overlays[@]}"; do
    name=$(basename "$dir")
    out=$work/$name.yaml
    # An empty KUBECONFIG: kubectl has no cluster to talk to, whatever the machine has.
    if ! KUBECONFIG=/dev/null kubectl kustomize "$dir" >"$out" 2>"$work/err"; then
        fail "overlays/$name: kubectl kustomize: $(cat "$work/err")"
        continue
    fi
    docs=$("$PYTHON" -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$out")
    if [ "$docs" -eq 0 ]; then
        fail "overlays/$name: kubectl kustomize rendered no objects"
        continue
    fi
    # kubernetes-validate prints one line per object and version: INFO (passed),
    # ERROR (did not validate), WARN (no schema for the kind: exits 0, so it is
    # caught here) or FATAL (unknown Kubernetes version).
    report=$("$PYTHON" -m kubernetes_validate --strict "${version_args[@]}" "$out" 2>&1) || true
    report=${report//$out/overlays\/$name}
    passed=$(grep -c '^INFO .* passed for resource ' <<<"$report" || true)
    problems=$(grep -v '^INFO .* passed for resource ' <<<"$report" || true)
    if [ -n "$problems" ]; then
        while IFS= read -r line; do
            line=${line#ERROR }
            [ "$line" = "${line#WARN }" ] || line="no Kubernetes schema (not a core API kind): ${line#WARN }"
            fail "$line"
        done <<<"$problems"
    fi
    expected=$((docs * $(wc -w <<<"$K8S_VERSIONS")))
    if [ "$passed" -ne "$expected" ]; then
        fail "overlays/$name: $passed of $expected object validations passed"
    else
        objects=$(sed -n 's/^INFO .* passed for resource \([^ ]*\) against version .*/\1/p' <<<"$report" | sort -u | paste -sd' ')
        echo "ok: overlays/$name: $docs objects valid (strict) for Kubernetes $K8S_VERSIONS: $objects"
    fi
done

# Files an overlay ships beside its kustomization but does not render.
for f in "$deploy"/kubernetes/overlays/*/*.yaml; do
    if grep -q '^kind: KubeletConfiguration' "$f"; then
        echo "note: ${f#"$deploy"/} is a KubeletConfiguration (a kubelet config file, not an API object:" \
            "kubernetes-validate has no schema for it); tests/it/deploy.rs checks its clusterDNS"
    fi
done

rules=$deploy/observability/prometheus-rules.yaml
if [ -f "$rules" ]; then
    if report=$("$PROMTOOL" check rules "$rules" 2>&1); then
        echo "ok: observability/prometheus-rules.yaml: promtool check rules:" \
            "$(grep -o 'SUCCESS: .*' <<<"$report")"
    else
        fail "observability/prometheus-rules.yaml: promtool check rules: $(grep -v '^Checking ' <<<"$report" | paste -sd' ')"
    fi
else
    fail "observability/prometheus-rules.yaml is missing"
fi

if [ "$failed" -ne 0 ]; then
    echo "deploy/validate.sh: the manifests have errors (above)" >&2
    exit 1
fi
echo "deploy/validate.sh: all manifests valid"
