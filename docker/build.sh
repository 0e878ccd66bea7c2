#!/usr/bin/env bash
# Build and smoke-test the CPU image without Docker or a registry: buildah on vfs storage, chroot isolation.
#
#   docker/build.sh            all steps: check, base, image, smoke (then `docker/build.sh clean`)
#   docker/build.sh STEP...    check | base | image | smoke | clean
#
# base:  a stand-in for python:3.11-slim-bookworm made from Debian packages with mmdebstrap (no Docker Hub
#        needed), committed as $BASE_IMAGE. Debian's python3 is /usr/bin/python3 (3.11 in bookworm).
# image: `buildah bud` of docker/Dockerfile on it, as $IMAGE. A torch wheel found in $TORCH_WHEELS is passed
#        in through docker/wheels/ (the build context) when the CPU wheel index is unreachable.
# smoke: in a container of $IMAGE, as the image's non-root user: `orchestrator --help`, then docker/smoke.sh:
#        the `head` mode of docker/entrypoint.sh (ray start --head + orchestrator up) on a demo-only
#        pools.yaml, /healthz, calls through the gateway with the token, and a clean stop.
# Re-runnable: a base image already in the store is kept; the smoke container is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

STORE=(--storage-driver vfs)
WORK_DIR=${WORK_DIR:-/var/tmp/orchestrator-build}
BASE_IMAGE=${BASE_IMAGE:-localhost/orchestrator-base:bookworm}
IMAGE=${IMAGE:-localhost/orchestrator:cpu}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# The smoke test shares this machine's network (chroot isolation): ports apart from a developer's own Ray.
SMOKE_RAY_PORT=${SMOKE_RAY_PORT:-16379}
SMOKE_GATEWAY_PORT=${SMOKE_GATEWAY_PORT:-18000}

log() { printf '== %s\n' "$*" >&2; }

step_check() {
    local missing=()
    for tool in buildah mmdebstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        echo "missing: ${missing[*]}; install with:  apt-get install -y buildah mmdebstrap" >&2
        exit 1
    fi
    log "$(buildah --version); mmdebstrap $(mmdebstrap --version | awk '{print $2}')"
    df -h / | tail -1 >&2
}

step_base() {
    if buildah "${STORE[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE already built"
        return
    fi
    mkdir -p "$WORK_DIR"
    local tarball="$WORK_DIR/bookworm-python.tar"
    if [[ ! -s $tarball ]]; then
        log "mmdebstrap: bookworm + python3 -> $tarball"
        mmdebstrap --variant=minbase --format=tar --include=python3,python3-venv,python3-pip,ca-certificates \
            --aptopt='APT::Install-Recommends "false"' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            bookworm "$tarball.part" http://deb.debian.org/debian
        mv "$tarball.part" "$tarball"
    fi
    log "importing $tarball as $BASE_IMAGE"
    local ctr
    ctr=$(buildah "${STORE[@]}" from scratch)
    buildah "${STORE[@]}" add "$ctr" "$tarball" /  # a local tar archive is unpacked into the container
    buildah "${STORE[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3 "$ctr"
    buildah "${STORE[@]}" commit --rm "$ctr" "$BASE_IMAGE"
}

step_image() {
    # The torch wheel goes in through the build context; the Dockerfile takes any wheel in docker/wheels/.
    local index=$TORCH_INDEX_URL
    if compgen -G "$TORCH_WHEELS/torch-*.whl" >/dev/null; then
        for wheel in "$TORCH_WHEELS"/torch-*.whl; do
            [[ -e docker/wheels/$(basename "$wheel") ]] || ln "$wheel" docker/wheels/ 2>/dev/null || cp "$wheel" docker/wheels/
        done
        if ! curl -fsS -m 10 -o /dev/null "$TORCH_INDEX_URL/torch/"; then
            log "$TORCH_INDEX_URL is unreachable: torch from docker/wheels only"
            index=""
        fi
    fi
    # This machine's CA bundle over the image's, for its build steps only: a TLS-inspecting proxy's CA
    # (one in /usr/local/share/ca-certificates) is then trusted by pip and uv in the build.
    local ca=()
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null && [[ -s $HOST_CA_BUNDLE ]]; then
        ca=(--volume "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
    fi
    log "buildah bud -> $IMAGE (log: $WORK_DIR/bud.log)"
    mkdir -p "$WORK_DIR"
    local started=$SECONDS
    buildah "${STORE[@]}" bud --isolation chroot --pull=never "${ca[@]}" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_INDEX_URL="$index" \
        -f docker/Dockerfile -t "$IMAGE" . 2>&1 | tee "$WORK_DIR/bud.log"
    log "built $IMAGE in $((SECONDS - started)) s"
    buildah "${STORE[@]}" images "$IMAGE"
}

step_smoke() {
    local ctr
    ctr=$(buildah "${STORE[@]}" from --pull=never "$IMAGE")
    trap "buildah ${STORE[*]} rm $ctr >/dev/null" RETURN
    buildah "${STORE[@]}" copy "$ctr" docker/smoke.sh /tmp/smoke.sh
    local run=(buildah "${STORE[@]}" run --isolation chroot --user 1000:1000)
    log "orchestrator --help"
    "${run[@]}" "$ctr" -- orchestrator --help
    log "orchestrator up --help (the --host line)"
    "${run[@]}" "$ctr" -- orchestrator up --help | grep -A1 -- --host
    log "docker/smoke.sh in the container"
    "${run[@]}" --env ORCHESTRATOR_TOKEN=smoke-token --env RAY_PORT="$SMOKE_RAY_PORT" \
        --env GATEWAY_PORT="$SMOKE_GATEWAY_PORT" "$ctr" -- sh /tmp/smoke.sh
}

step_clean() {
    log "removing working containers and dangling images (kept: $IMAGE, $BASE_IMAGE)"
    buildah "${STORE[@]}" rm --all
    buildah "${STORE[@]}" rmi --prune || true
    rm -f docker/wheels/*.whl
    df -h / | tail -1 >&2
}

steps=("$@")
((${#steps[@]})) || steps=(check base image smoke)
for step in "${steps[@]}"; do
    case $step in
        check | base | image | smoke | clean) "step_$step" ;;
        *) echo "unknown step: $step (check | base | image | smoke | clean)" >&2; exit 2 ;;
    esac
done
