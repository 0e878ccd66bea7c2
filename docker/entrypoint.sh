#!/bin/sh
# orchestrator-node: the image as one node of a Ray cluster (installed as /usr/local/bin/orchestrator-node).
#
#   orchestrator-node head [ARGS...]    ray start --head on $RAY_PORT (6379; under KubeRay its generated
#                                       command), then `orchestrator up ARGS` on it (RAY_ADDRESS=auto:
#                                       pools.yaml's ray.address), gateway on 0.0.0.0
#   orchestrator-node worker            ray start --address=$RAY_HEAD_ADDRESS --block (waits for the head)
#   orchestrator-node COMMAND...        runs COMMAND (e.g. orchestrator status --url http://head:8000)
#
# The head runs the coordinator, so pools.yaml's state_dir ($ORCHESTRATOR_STATE_DIR) is the head's disk.
# Environment: ORCHESTRATOR_TOKEN (required: the gateway binds 0.0.0.0), RAY_PORT, RAY_HEAD_ADDRESS,
# RAY_NUM_CPUS / RAY_NUM_GPUS (what this node offers; default: what Ray detects), RAY_START_ARGS (more
# `ray start` flags), RAY_AUTH_TOKEN (set the same on every node: Ray's token auth, RAY_AUTH_MODE=token).
set -eu

mode=${1:-head}
[ $# -gt 0 ] && shift

# Ray's token auth: on when a token is given. Empty variables (compose passes them through) count as unset.
if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
else
    unset RAY_AUTH_TOKEN
    [ -n "${RAY_AUTH_MODE:-}" ] || unset RAY_AUTH_MODE
fi

node_args() {
    printf '%s ' --disable-usage-stats
    [ -z "${RAY_NUM_CPUS:-}" ] || printf -- '--num-cpus=%s ' "$RAY_NUM_CPUS"
    [ -z "${RAY_NUM_GPUS:-}" ] || printf -- '--num-gpus=%s ' "$RAY_NUM_GPUS"
    printf '%s' "${RAY_START_ARGS:-}"
}

case $mode in
head)
    if [ -n "${KUBERAY_GEN_RAY_START_CMD:-}" ]; then
        # Under KubeRay (ray.io/overwrite-container-cmd): its generated `ray start --head ... --block`,
        # built from the RayCluster's rayStartParams, in the background.
        /bin/bash -c "$KUBERAY_GEN_RAY_START_CMD" &
    else
        # shellcheck disable=SC2046  # node_args is a list of flags
        ray start --head --port="${RAY_PORT:-6379}" --dashboard-host=0.0.0.0 $(node_args)
    fi
    until ray health-check --address "127.0.0.1:${RAY_PORT:-6379}" >/dev/null 2>&1; do sleep 1; done
    export RAY_ADDRESS="${RAY_ADDRESS:-auto}"
    # Not exec: on SIGTERM `up` drains calls and checkpoints sessions, then Ray stops.
    orchestrator up --host "${ORCHESTRATOR_HOST:-0.0.0.0}" "$@" &
    up=$!
    trap 'kill -TERM "$up" 2>/dev/null || true' TERM INT
    status=0
    wait "$up" || status=$?
    if kill -0 "$up" 2>/dev/null; then  # the trap interrupted the wait: wait for the drain
        status=0
        wait "$up" || status=$?
    fi
    ray stop >/dev/null 2>&1 || true
    exit "$status"
    ;;
worker)
    head=${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS to the head node address (host:port), e.g. head:6379}
    waited=0
    until ray health-check --address "$head" >/dev/null 2>&1; do
        waited=$((waited + 2))
        if [ "$waited" -gt "${RAY_HEAD_WAIT_S:-300}" ]; then
            echo "orchestrator-node: no Ray head at $head after ${RAY_HEAD_WAIT_S:-300}s" >&2
            exit 1
        fi
        sleep 2
    done
    # shellcheck disable=SC2046
    exec ray start --address="$head" --block $(node_args)
    ;;
*)
    exec "$mode" "$@"
    ;;
esac
