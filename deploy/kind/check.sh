#!/usr/bin/env bash
# Run the example scenarios' connectivity checks (examples/README.md) in a real kind cluster
# with its default CNI (kindnet) and netward enforcing, then measure iperf3 throughput
# between two pods across netward.
#
#   deploy/kind/check.sh            # create the cluster if needed, build, install, check
#   KEEP=1 deploy/kind/check.sh     # keep the cluster afterwards
#
# Needs: docker, kind, kubectl. Pods are agnhost servers (which ship `dig`) with the example
# pods' names, labels and named container ports; kube-system/coredns is the cluster's own.
# Besides pod-to-pod checks it connects to Service cluster IPs (kube-proxy DNATs them after
# netward's egress check) and resolves names through the kube-dns Service.
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
# Namespaces only (pods are re-created below as agnhost servers).
kubectl apply -f <(awk 'BEGIN{RS="---"} /kind: Namespace/ && !/name: kube-system/ {print "---" $0}' \
  "$ROOT/examples/00-cluster.yaml")
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

# verdict allowed|denied DESCRIPTION COMMAND...: run COMMAND, compare its success with DESCRIPTION's
# expectation and count failures.
verdict() {
  local want=$1 what=$2 got; shift 2
  if "$@" >/dev/null 2>&1; then got=allowed; else got=denied; fi
  if [ "$got" = "$want" ]; then
    printf 'ok    %-60s %s\n' "$what" "$got"
  else
    printf 'FAIL  %-60s %s (expected %s)\n' "$what" "$got" "$want"
    FAILED=$((FAILED + 1))
  fi
}

vip_of() { kubectl -n "${1%%/*}" get service "${1##*/}" -o jsonpath='{.spec.clusterIP}'; }

# A Service has ready endpoints (the EndpointSlice controller has caught up); waits up to 60 s.
wait_endpoints() {
  local ns=${1%%/*} svc=${1##*/}
  for _ in $(seq 60); do
    if [ -n "$(kubectl -n "$ns" get endpointslices -l "kubernetes.io/service-name=$svc" \
        -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[*]}')" ]; then
      return 0
    fi
    sleep 1
  done
  echo "Service $1 has no ready endpoint after 60 s" >&2
  return 1
}

# expect_vip allowed|denied FROM(ns/pod) SERVICE(ns/name) PORT: a connection to the Service's
# cluster IP, which netward judges before kube-proxy's DNAT, against every ready endpoint.
expect_vip() {
  local want=$1 from=$2 svc=$3 port=$4 vip
  vip="$(vip_of "$svc")"
  verdict "$want" "$(printf '%-22s -> Service %-20s %s:%s' "$from" "$svc" "$vip" "$port")" \
    kubectl -n "${from%%/*}" exec "${from##*/}" -- /agnhost connect "$vip:$port" --timeout=2s
}

# dns_via_vip FROM(ns/pod) [+tcp]: resolve through the kube-dns Service's cluster IP (what every
# pod's resolv.conf points at); succeeds only with an answer.
dns_via_vip() {
  local from=$1 answer
  answer="$(kubectl -n "${from%%/*}" exec "${from##*/}" -- \
    dig "@$(vip_of kube-system/kube-dns)" +short +time=2 +tries=2 ${2:+"$2"} \
    kubernetes.default.svc.cluster.local 2>/dev/null)" || return 1
  [[ "$answer" =~ ^[0-9.]+$ ]]
}

log "Service virtual addresses (egress is checked before kube-proxy's DNAT)"
kubectl apply -f - <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: production}
spec:
  selector: {app: backend}
  ports: [{name: api, port: 80, targetPort: api}]
---
apiVersion: v1
kind: Service
metadata: {name: database, namespace: production}
spec:
  selector: {app: database}
  ports: [{name: postgres, port: 5432, targetPort: postgres}]
YAML
wait_endpoints production/backend
wait_endpoints production/database
wait_endpoints kube-system/kube-dns
# frontend's egress allows backend:8080, the Service's target port: the VIP on 80 works.
expect_vip allowed production/frontend production/backend  80
expect_vip allowed production/backend  production/database 5432
# frontend may not reach the database pod, so neither its Service.
expect_vip denied  production/frontend production/database 5432

log "DNS through the kube-dns Service under default deny + allow-dns-egress (production)"
verdict allowed "production/backend resolves via the kube-dns VIP (UDP)" dns_via_vip production/backend
verdict allowed "production/backend resolves via the kube-dns VIP (TCP)" dns_via_vip production/backend +tcp
# A namespace with default-deny egress and no DNS rule: the kube-dns VIP is blocked.
kubectl create namespace nodns --dry-run=client -o yaml | kubectl apply -f -
pod nodns client app=client http:8080
kubectl -n nodns wait --for=condition=Ready pod/client --timeout=180s
kubectl apply -f - <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: nodns}
spec:
  podSelector: {}
  policyTypes: [Egress]
YAML
sleep 2
verdict denied "nodns/client resolves via the kube-dns VIP (no DNS rule)" dns_via_vip nodns/client
verdict denied "nodns/client resolves via the kube-dns VIP over TCP" dns_via_vip nodns/client +tcp

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
