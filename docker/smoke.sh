#!/bin/sh
# The smoke test docker/build.sh runs inside a container of the image, as the image's user: the baked pool
# envs, then `orchestrator-node head` (ray start --head + orchestrator up) on a demo-only pools.yaml,
# /healthz, calls through the gateway with the token, one without it, the state dir, and a clean stop.
# Environment: ORCHESTRATOR_TOKEN, GATEWAY_PORT, RAY_PORT (ports apart from this machine's own Ray).
set -eu
cd /opt/orchestrator/app
echo "== the baked pool envs"
orchestrator envs list

mkdir -p /tmp/smoke
cp -r workers /tmp/smoke/
cat > /tmp/smoke/pools.yaml <<EOF
ray: {address: "\${RAY_ADDRESS:-}", namespace: smoke}
state_dir: \${ORCHESTRATOR_STATE_DIR}
gateway: {host: 0.0.0.0, port: $GATEWAY_PORT, token: "\${ORCHESTRATOR_TOKEN}"}
pools:
  demo: {worker: "workers.demo:Demo", size: 1, resources: {num_cpus: 0.25, memory: 256MiB}}
EOF
export RAY_START_ARGS="--num-cpus=1 --object-store-memory=100000000 --dashboard-port=18265
 --ray-client-server-port=20001 --dashboard-agent-listen-port=52366 --min-worker-port=20100 --max-worker-port=20199"

echo "== orchestrator-node head --config /tmp/smoke/pools.yaml"
orchestrator-node head --config /tmp/smoke/pools.yaml > /tmp/smoke/up.log 2>&1 &
node=$!
python3 - <<'EOF'
import json, os, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{os.environ['GATEWAY_PORT']}"
began = time.monotonic()
while True:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
            print(f"GET /healthz after {time.monotonic() - began:.0f}s:", r.status, r.read().decode())
            break
    except OSError:
        if time.monotonic() - began > 300:
            print(open("/tmp/smoke/up.log").read())
            sys.exit("the gateway never answered /healthz")
        time.sleep(1)
auth = {"authorization": "Bearer " + os.environ["ORCHESTRATOR_TOKEN"], "content-type": "application/json"}
for op, args in (("greet", {"name": "container"}), ("where", {})):
    req = urllib.request.Request(f"{base}/v1/pools/demo/ops/{op}", data=json.dumps(args).encode(), headers=auth)
    with urllib.request.urlopen(req, timeout=60) as r:
        print(f"POST /v1/pools/demo/ops/{op} {json.dumps(args)}:", r.status, r.read().decode())
try:
    urllib.request.urlopen(base + "/v1/pools", timeout=10)
    sys.exit("GET /v1/pools answered without the token")
except urllib.error.HTTPError as e:
    print("GET /v1/pools without the token:", e.code)
EOF
echo "== state dir $ORCHESTRATOR_STATE_DIR, as $(id -un) (uid $(id -u))"
ls -la "$ORCHESTRATOR_STATE_DIR"
kill -TERM "$node"
wait "$node" || true
echo "== the end of the head's log"
tail -n 5 /tmp/smoke/up.log
