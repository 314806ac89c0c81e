#!/usr/bin/env bash
# Run the example scenarios' connectivity checks (examples/README.md) in a real kind cluster
# with its default CNI (kindnet) and netward enforcing, then measure iperf3 throughput
# between two pods across netward.
#
#   deploy/kind/check.sh            # create the cluster if needed, build, install, check
#   KEEP=1 deploy/kind/check.sh     # keep the cluster afterwards
#
# Needs: docker, kind, kubectl. Pods are agnhost servers with the example pods' names,
# labels and named container ports; kube-system/coredns is the cluster's own.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER="${CLUSTER:-netward}"
AGNHOST="registry.k8s.io/e2e-test-images/agnhost:2.47"
IPERF="networkstatic/iperf3:latest"
FAILED=0

log() { printf '\n== %s\n' "$*"; }

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$ROOT/deploy/kind/kind-config.yaml"
fi
cleanup() { [ -n "${KEEP:-}" ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

log "building and loading the netward image"
docker build -f "$ROOT/deploy/Dockerfile" -t netward:latest "$ROOT"
kind load docker-image netward:latest --name "$CLUSTER"

log "installing netward"
kubectl apply -k "$ROOT/deploy"
kubectl -n netward-system rollout status ds/netward --timeout=180s

# pod NAMESPACE NAME LABELS(k=v,...) PORTS(name:port ...)
pod() {
  local ns=$1 name=$2 labels=$3; shift 3
  local ports="" env=""
  for p in "$@"; do
    ports+="        - {name: ${p%%:*}, containerPort: ${p##*:}}"$'\n'
    env+="        - {name: SERVE_PORT_${p##*:}, value: ok}"$'\n'
  done
  local lbl=""
  IFS=, read -ra kv <<<"$labels"
  for l in "${kv[@]}"; do lbl+="    ${l%%=*}: ${l##*=}"$'\n'; done
  kubectl apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: $ns
  labels:
$lbl
spec:
  containers:
    - name: server
      image: $AGNHOST
      args: ["porter"]
      env:
$env
      ports:
$ports
YAML
}

log "creating the example namespaces and pods"
for f in "$ROOT"/examples/00-cluster.yaml; do
  # Namespaces only (pods are re-created below as agnhost servers).
  kubectl apply -f <(awk 'BEGIN{RS="---"} /kind: Namespace/ && !/name: kube-system/ {print "---" $0}' "$f")
done
pod production frontend app=frontend,tier=web http:80 metrics:9090
pod production backend app=backend,tier=api api:8080 metrics:9090
pod production database app=database,tier=data postgres:5432 metrics:9187
pod monitoring prometheus app=prometheus web:9090
pod tenant-a web app=web http:8080
pod tenant-a worker app=worker http:8080
pod tenant-b web app=web http:8080
pod orders orders-api app=orders-api http:8080
pod orders orders-worker app=orders-worker http:8080
pod data postgres app=postgres postgres:5432
for ns in production monitoring tenant-a tenant-b orders data; do
  kubectl -n "$ns" wait --for=condition=Ready pod --all --timeout=180s
done

log "applying the example policies"
for f in "$ROOT"/examples/[1-9]*.yaml; do kubectl apply -f "$f"; done
sleep 3 # the agents recompile within milliseconds; give kubectl's view time to settle

ip_of() { kubectl -n "${1%%/*}" get pod "${1##*/}" -o jsonpath='{.status.podIP}'; }

# expect allowed|denied FROM(ns/pod) TO(ns/pod) PORT
expect() {
  local want=$1 from=$2 to=$3 port=$4 got
  local ip; ip="$(ip_of "$to")"
  if kubectl -n "${from%%/*}" exec "${from##*/}" -- /agnhost connect "$ip:$port" --timeout=2s >/dev/null 2>&1; then
    got=allowed
  else
    got=denied
  fi
  if [ "$got" = "$want" ]; then
    printf 'ok    %-26s -> %-24s :%-5s %s\n' "$from" "$to" "$port" "$got"
  else
    printf 'FAIL  %-26s -> %-24s :%-5s %s (expected %s)\n' "$from" "$to" "$port" "$got" "$want"
    FAILED=$((FAILED + 1))
  fi
}

log "connectivity checks (examples/README.md)"
# Default deny + public frontend (port 80).
expect denied  production/backend    production/frontend 80
expect allowed monitoring/prometheus production/frontend 80
expect allowed tenant-a/web          production/frontend 80
expect denied  monitoring/prometheus production/backend  80
# Three tiers.
expect allowed production/frontend   production/backend  8080
expect denied  production/backend    production/frontend 80
expect denied  tenant-a/web          production/backend  8080
expect allowed production/backend    production/database 5432
expect denied  production/frontend   production/database 5432
# Monitoring: named port per destination pod.
expect allowed monitoring/prometheus production/frontend 9090
expect allowed monitoring/prometheus production/backend  9090
expect denied  monitoring/prometheus production/database 9090
expect allowed monitoring/prometheus production/database 9187
# Tenant isolation.
expect allowed tenant-a/web          tenant-a/worker     8080
expect allowed tenant-a/worker       tenant-a/web        8080
expect denied  tenant-b/web          tenant-a/web        8080
expect denied  tenant-a/web          tenant-b/web        8080
expect denied  orders/orders-api     tenant-a/web        8080
# Cross-namespace AND.
expect allowed orders/orders-api     data/postgres       5432
expect denied  orders/orders-worker  data/postgres       5432
expect denied  production/backend    data/postgres       5432

log "DNS from production through the cluster's coredns"
if kubectl -n production exec backend -- /agnhost nslookup kubernetes.default >/dev/null 2>&1 \
   || kubectl -n production exec backend -- nslookup kubernetes.default >/dev/null 2>&1; then
  echo "ok    production/backend resolves names (allow-dns-egress)"
else
  echo "note  DNS lookup tool not available in the image or lookup failed"
fi

log "iperf3 across netward (tenant-a worker -> web, allowed by policy)"
kubectl -n tenant-a run iperf-server --image="$IPERF" --labels=app=web --port=5201 -- -s
kubectl -n tenant-a run iperf-client --image="$IPERF" --labels=app=worker --restart=Never --command -- sleep 3600
kubectl -n tenant-a wait --for=condition=Ready pod/iperf-server pod/iperf-client --timeout=180s
# tenant-a's policy allows its own namespace on any port.
kubectl -n tenant-a exec iperf-client -- iperf3 -c "$(ip_of tenant-a/iperf-server)" -t 10 | tail -n 4

log "netward status on each node"
for p in $(kubectl -n netward-system get pods -l app.kubernetes.io/name=netward -o name); do
  kubectl -n netward-system exec "$p" -- netward status || true
done

if [ "$FAILED" -gt 0 ]; then
  echo "$FAILED check(s) failed"
  exit 1
fi
echo "all checks passed"
