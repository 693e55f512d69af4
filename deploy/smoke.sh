#!/usr/bin/env bash
# The images built and the whole stack run under a real Docker engine (`make compose-smoke`;
# docs/deploy.md has a run's output). Too slow for `make test`: about 25 minutes cold with the
# vfs storage driver, a few minutes warm.
#
#  1. a Docker engine: the running one, else one of its own (dockerd with vfs, no bridge, no
#     iptables, its data under $SMOKE_DIR), installing Debian's docker.io when dockerd is missing;
#  2. base images: python:3.11-slim-bookworm and redis:7-alpine when the registry gives them,
#     else built offline: a Debian bookworm rootfs (debootstrap, the host's extra CA
#     certificates trusted) imported as the Python base, and Debian's redis-server on top of it;
#  3. the gateway's and the verifier's images (services/*/Dockerfile, classic builder, host
#     network; torch from a local CPU wheel when pip's find-links has one, served on 127.0.0.1);
#  4. the stack (redis, gateway, verifier) with `docker compose` (v2) or `docker-compose` (v1),
#     docker-compose.host.yml (host networking; docker-compose.yml with SMOKE_NETWORK=bridge),
#     the gateway serving the tiny toy world's teacher (an `hf` teacher), every healthcheck
#     waited for;
#  5. checks from the host: the verifier over HTTP (/readyz, /v1/score), the gateway over gRPC
#     (health, reflection, ListTeachers, a SampleChunks sample and its repeat from the cache,
#     whose entry must be in Redis), and a two-step `omniopd-train` against the containers;
#  6. everything torn down on the way out (also on a failure or Ctrl-C): the stack with its
#     volumes, the wheel server, and the engine if it started one (by its PID).
#
# Its last line is one JSON object: build seconds per image, seconds to healthy, image sizes,
# each check's pass/fail. It exits 1 when a check failed.
#
# Settings (environment):
#   SMOKE_DIR        scratch: logs, the world, the run; the engine's data when it starts one
#                    (about 23 GB with vfs). Default /var/tmp/omniopd-smoke.
#   SMOKE_ENGINE     auto (default: the running engine, else its own), running, own
#   SMOKE_BASE       auto (default: the registry's images when they can be pulled, else built
#                    offline), registry, offline
#   SMOKE_NETWORK    host (default with its own engine or where the engine has no bridge
#                    network) or bridge
#   SMOKE_KEEP_ENGINE_DATA  1 (default) keeps its own engine's data for a warm rerun; 0 removes it
#   SMOKE_TORCH_WHEEL       a torch CPU wheel for the images (default: one in pip's find-links)
#   SMOKE_WORLD      a toy world folder to serve (default: `omniopd-toy tiny` in $SMOKE_DIR)
#   SMOKE_GATEWAY_PORT, SMOKE_METRICS_PORT, SMOKE_VERIFIER_PORT, SMOKE_REDIS_PORT,
#   SMOKE_WHEEL_PORT  (50151, 9564, 8190, 6389, 18765: away from a stack on the usual ports)
#   SMOKE_HEALTH_TIMEOUT_S  (600), SMOKE_DEBIAN_MIRROR (http://deb.debian.org/debian)
#   PY               the project's Python (default .venv/bin/python: `make setup`)
#   DOCKER           the Docker client (default: the one packaged beside the dockerd it starts,
#                    else `docker` on PATH)

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

SMOKE_DIR=${SMOKE_DIR:-/var/tmp/omniopd-smoke}
SMOKE_ENGINE=${SMOKE_ENGINE:-auto}
SMOKE_BASE=${SMOKE_BASE:-auto}
SMOKE_NETWORK=${SMOKE_NETWORK:-}
SMOKE_KEEP_ENGINE_DATA=${SMOKE_KEEP_ENGINE_DATA:-1}
SMOKE_HEALTH_TIMEOUT_S=${SMOKE_HEALTH_TIMEOUT_S:-600}
SMOKE_DEBIAN_MIRROR=${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SMOKE_WHEEL_PORT=${SMOKE_WHEEL_PORT:-18765}
PY=${PY:-$ROOT/.venv/bin/python}
DOCKER_GIVEN=${DOCKER:+1}
DOCKER=${DOCKER:-docker}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# What compose reads (docker-compose*.yml, .env.example): exported so that the shell and the
# env file written below agree whatever the caller's shell held.
export OMNIOPD_BIND=127.0.0.1
export GATEWAY_PORT=${SMOKE_GATEWAY_PORT:-50151}
export GATEWAY_METRICS_PORT=${SMOKE_METRICS_PORT:-9564}
export VERIFIER_PORT=${SMOKE_VERIFIER_PORT:-8190}
export REDIS_PORT=${SMOKE_REDIS_PORT:-6389}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Compose v1 gives up on an engine call after 60 s, and with vfs creating a container copies its
# whole image (1.4 to 1.6 GB here): two at once took longer than that on this project's machine.
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600}

PROJECT=omniopd-smoke
LOGS=$SMOKE_DIR/logs
RESULTS=$SMOKE_DIR/results.tsv
ENGINE_DIR=$SMOKE_DIR/engine
BASE_IMAGE=omniopd/smoke-base:bookworm
OFFLINE_REDIS_IMAGE=omniopd/smoke-redis:bookworm
PYTHON_IMAGE=python:3.11-slim-bookworm
REDIS_IMAGE=redis:7-alpine
TRAIN_STEPS=2
ENGINE_PID=
WHEEL_PID=
STACK_STARTED=
COMPOSE=()
COMPOSE_FILE=

say() { printf 'smoke: %s\n' "$*"; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }
pass() { record check "$1" pass; say "check $1: pass${2:+ ($2)}"; }
fail() { record check "$1" fail; say "check $1: FAIL${2:+ ($2)}"; }
die() { say "stopping early: $*"; exit 1; }
now() { date +%s; }
# The last lines of a log, indented, when a step failed.
show_tail() { say "last lines of $1:"; tail -n "${2:-30}" "$1" 2>/dev/null | sed 's/^/    /'; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    say "installing Debian's $* (apt-get)"
    if ! as_root apt-get update -qq >>"$LOGS/apt.log" 2>&1 ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOGS/apt.log" 2>&1; then
        show_tail "$LOGS/apt.log"
        die "could not install $*"
    fi
}

docker_() { "$DOCKER" "$@"; }

compose() {
    "${COMPOSE[@]}" -p "$PROJECT" --project-directory "$ROOT" -f "$COMPOSE_FILE" \
        -f "$SMOKE_DIR/compose.smoke.yml" --env-file "$SMOKE_DIR/smoke.env" "$@"
}

# -- teardown and the summary line ------------------------------------------------------------

finish() {
    local rc=$? summary_rc
    trap - EXIT INT TERM
    if [ -n "$STACK_STARTED" ]; then
        say "tearing down: ${COMPOSE[*]} down --volumes"
        compose logs --no-color >"$LOGS/compose-services.log" 2>&1
        if compose down --volumes --remove-orphans >>"$LOGS/compose.log" 2>&1; then
            pass teardown
        else
            fail teardown "see $LOGS/compose.log"
        fi
    fi
    if [ -n "$WHEEL_PID" ]; then
        kill "$WHEEL_PID" 2>/dev/null
        wait "$WHEEL_PID" 2>/dev/null
    fi
    if [ -n "$ENGINE_PID" ]; then
        stop_engine
    fi
    if [ -n "$ENGINE_PID" ] && [ "$SMOKE_KEEP_ENGINE_DATA" = 0 ]; then
        remove_engine_data
    fi
    say "logs: $LOGS"
    "$PY" "$ROOT/deploy/smoke_checks.py" report "$RESULTS"
    summary_rc=$?
    if [ "$rc" = 0 ] && [ "$summary_rc" != 0 ]; then rc=1; fi
    exit "$rc"
}

stop_engine() {
    say "stopping the Docker engine it started (dockerd, pid $ENGINE_PID)"
    kill -TERM "$ENGINE_PID" 2>/dev/null
    for _ in $(seq 60); do
        kill -0 "$ENGINE_PID" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$ENGINE_PID" 2>/dev/null; then
        say "dockerd (pid $ENGINE_PID) still running after 60 s: SIGKILL"
        kill -KILL "$ENGINE_PID" 2>/dev/null
    fi
    wait "$ENGINE_PID" 2>/dev/null
    # dockerd 20.10 leaves its exec root's netns/default (an nsfs mount) behind when it stops.
    unmount_below "$ENGINE_DIR/"
    say "engine stopped"
}

# Whatever is still mounted below a folder (deepest first).
unmount_below() {
    local mount
    while read -r mount; do
        say "unmounting $mount"
        as_root umount -l "$mount" 2>/dev/null
    done < <(awk -v d="$1" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
}

remove_engine_data() {
    unmount_below "$ENGINE_DIR/"
    say "removing the engine's data ($ENGINE_DIR)"
    as_root rm -rf --one-file-system "$ENGINE_DIR"
}

# -- 1. the engine ----------------------------------------------------------------------------

engine_running() { timeout 20 "$DOCKER" info >/dev/null 2>&1; }

start_engine() {
    [ "$(id -u)" = 0 ] || die "no running Docker engine, and starting one needs root"
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    local dockerd client
    dockerd=$(command -v dockerd)
    # The client packaged with that engine (Debian's /usr/bin/docker beside /usr/sbin/dockerd),
    # not whichever `docker` comes first on PATH, unless DOCKER names one.
    client=$(cd "$(dirname "$dockerd")/../bin" 2>/dev/null && pwd)/docker
    if [ -z "$DOCKER_GIVEN" ] && [ -x "$client" ]; then
        DOCKER=$client
    fi
    mkdir -p "$ENGINE_DIR/data" "$ENGINE_DIR/exec" "$ENGINE_DIR/tmp"
    export DOCKER_HOST="unix://$ENGINE_DIR/docker.sock"
    local flags=(--storage-driver=vfs --bridge=none --iptables=false --ip-masq=false
        --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec"
        --pidfile "$ENGINE_DIR/dockerd.pid" --host "$DOCKER_HOST")
    say "starting a Docker engine of its own: dockerd ${flags[*]} (log $LOGS/dockerd.log)"
    # Its own session: a Ctrl-C reaches this script, which stops the stack and then the engine.
    DOCKER_TMPDIR="$ENGINE_DIR/tmp" setsid "$dockerd" "${flags[@]}" \
        >"$LOGS/dockerd.log" 2>&1 &
    ENGINE_PID=$!
    for _ in $(seq 60); do
        engine_running && break
        kill -0 "$ENGINE_PID" 2>/dev/null || { show_tail "$LOGS/dockerd.log"; die "dockerd exited"; }
        sleep 1
    done
    engine_running || { show_tail "$LOGS/dockerd.log"; die "dockerd did not answer in 60 s"; }
    say "engine up: dockerd pid $ENGINE_PID, DOCKER_HOST=$DOCKER_HOST"
}

find_compose() {
    if docker_ compose version >/dev/null 2>&1; then
        COMPOSE=("$DOCKER" compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        apt_install docker-compose
        COMPOSE=(docker-compose)
    fi
    local version
    version=$("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -n1)
    record info compose "${COMPOSE[*]} $version"
    say "compose: ${COMPOSE[*]} $version"
}

# -- 2. base images -----------------------------------------------------------------------------

have_image() { docker_ image inspect "$1" >/dev/null 2>&1; }

pullable() {
    have_image "$1" && return 0
    say "pulling $1"
    timeout 120 "$DOCKER" pull -q "$1" >>"$LOGS/pull.log" 2>&1
}

build_offline_base() {
    local rootfs=$SMOKE_DIR/rootfs start
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    start=$(now)
    say "building the offline base image $BASE_IMAGE: debootstrap --variant=minbase" \
        "--include=python3,python3-venv,python-is-python3,ca-certificates bookworm $rootfs" \
        "$SMOKE_DEBIAN_MIRROR (log $LOGS/debootstrap.log)"
    as_root rm -rf --one-file-system "$rootfs"
    as_root debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$SMOKE_DEBIAN_MIRROR" >"$LOGS/debootstrap.log" 2>&1 ||
        { show_tail "$LOGS/debootstrap.log"; return 1; }
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        say "trusting the host's extra CA certificates in it:" /usr/local/share/ca-certificates/*.crt
        as_root cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    as_root chroot "$rootfs" update-ca-certificates >>"$LOGS/debootstrap.log" 2>&1 || return 1
    # pip inside the builds verifies TLS with the system's store (which has those certificates),
    # and no service starts while a package installs (the usual container policy).
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' | as_root tee "$rootfs/etc/pip.conf" >/dev/null
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$rootfs/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    say "importing $rootfs as $BASE_IMAGE"
    as_root tar -C "$rootfs" -c . | docker_ import -c 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" \
        >>"$LOGS/debootstrap.log" 2>&1 || return 1
    as_root rm -rf --one-file-system "$rootfs"
    record build_s base "$(($(now) - start))"
}

build_offline_redis() {
    local dir=$SMOKE_DIR/redis-image start
    mkdir -p "$dir"
    cat >"$dir/Dockerfile" <<EOF
# Written by deploy/smoke.sh: Debian's Redis on the offline base (no registry here).
FROM $BASE_IMAGE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/*
USER redis
EOF
    say "building $OFFLINE_REDIS_IMAGE: Debian's redis-server on $BASE_IMAGE (log $LOGS/build-redis.log)"
    start=$(now)
    DOCKER_BUILDKIT=0 docker_ build --network host -t "$OFFLINE_REDIS_IMAGE" "$dir" \
        >"$LOGS/build-redis.log" 2>&1 || { show_tail "$LOGS/build-redis.log"; return 1; }
    record build_s redis "$(($(now) - start))"
}

base_images() {
    local mode=$SMOKE_BASE
    if [ "$mode" = auto ]; then
        if have_image "$PYTHON_IMAGE" && have_image "$REDIS_IMAGE"; then
            mode=registry
        elif have_image "$BASE_IMAGE" && have_image "$OFFLINE_REDIS_IMAGE"; then
            say "the offline base images of an earlier run are there: using them"
            mode=offline
        elif pullable "$PYTHON_IMAGE" && pullable "$REDIS_IMAGE"; then
            mode=registry
        else
            say "the registry gives no $PYTHON_IMAGE / $REDIS_IMAGE here (see $LOGS/pull.log):" \
                "building the offline base"
            mode=offline
        fi
    fi
    record info base "$mode"
    if [ "$mode" = registry ]; then
        if ! pullable "$PYTHON_IMAGE" || ! pullable "$REDIS_IMAGE"; then
            fail base_images "pull failed (see $LOGS/pull.log)"
            return 1
        fi
        pass base_images "$PYTHON_IMAGE, $REDIS_IMAGE"
        return 0
    fi
    PYTHON_IMAGE=$BASE_IMAGE
    REDIS_IMAGE=$OFFLINE_REDIS_IMAGE
    if have_image "$BASE_IMAGE"; then
        say "offline base $BASE_IMAGE already built"
    else
        build_offline_base || { fail base_images "offline base"; return 1; }
    fi
    if have_image "$OFFLINE_REDIS_IMAGE"; then
        say "offline Redis $OFFLINE_REDIS_IMAGE already built"
    else
        build_offline_redis || { fail base_images "offline Redis"; return 1; }
    fi
    pass base_images "$PYTHON_IMAGE, $REDIS_IMAGE"
}

# -- 3. the project's images --------------------------------------------------------------------

# TORCH_BUILD_ARGS: a local torch CPU wheel served on 127.0.0.1 when there is one (the images'
# default, download.pytorch.org's CPU index, otherwise).
TORCH_BUILD_ARGS=()
torch_source() {
    local version wheel="${SMOKE_TORCH_WHEEL:-}" dir dirs
    version=${TORCH_SPEC#torch==}
    if [ -z "$wheel" ] && [ "$version" != "$TORCH_SPEC" ]; then
        dirs="${PIP_FIND_LINKS:-} $("$PY" -m pip config get global.find-links 2>/dev/null) /opt/wheels"
        for dir in $dirs; do
            dir=${dir#file://}
            for candidate in "$dir"/torch-"$version"+cpu-cp311-cp311-*linux*x86_64.whl; do
                [ -f "$candidate" ] && wheel=$candidate && break 2
            done
        done
    fi
    if [ -z "$wheel" ]; then
        say "torch: $TORCH_SPEC from the images' default index"
        return 0
    fi
    local name
    name=$(basename "$wheel")
    say "torch: $wheel, served on 127.0.0.1:$SMOKE_WHEEL_PORT for the builds"
    "$PY" -m http.server --bind 127.0.0.1 --directory "$(dirname "$wheel")" "$SMOKE_WHEEL_PORT" \
        >"$LOGS/wheel-server.log" 2>&1 &
    WHEEL_PID=$!
    sleep 1
    kill -0 "$WHEEL_PID" 2>/dev/null || { show_tail "$LOGS/wheel-server.log"; die "the wheel server did not start"; }
    TORCH_BUILD_ARGS=(--build-arg "TORCH_SPEC=torch @ http://127.0.0.1:$SMOKE_WHEEL_PORT/${name//+/%2B}"
        --build-arg "TORCH_INDEX_URL=")
}

build_service() {
    local name=$1 dockerfile=$2 start log=$LOGS/build-$1.log
    say "building omniopd/$name:local from $dockerfile (log $log)"
    start=$(now)
    if DOCKER_BUILDKIT=0 docker_ build --network host -f "$dockerfile" -t "omniopd/$name:local" \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" "${TORCH_BUILD_ARGS[@]}" "$ROOT" >"$log" 2>&1; then
        record build_s "$name" "$(($(now) - start))"
        pass "build_$name" "$(($(now) - start)) s"
    else
        record build_s "$name" "$(($(now) - start))"
        show_tail "$log"
        fail "build_$name"
        return 1
    fi
}

# -- 4. the stack ---------------------------------------------------------------------------------

ports_free() {
    "$PY" - "$@" <<'EOF'
import socket, sys
taken = []
for port in map(int, sys.argv[1:]):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            taken.append(port)
if taken:
    sys.exit(f"ports in use on 127.0.0.1: {taken} (set SMOKE_*_PORT)")
EOF
}

write_stack_files() {
    local world=$1
    cat >"$SMOKE_DIR/teachers.yaml" <<EOF
# Written by deploy/smoke.sh: the toy world's teacher, in the gateway's process.
teachers:
  - name: toy
    provider: hf
    model: $world/teacher
    device: cpu
    max_n: 8
    max_tokens: 64
EOF
    # The world is mounted at the same path, so the teachers file reads the same in and out.
    cat >"$SMOKE_DIR/compose.smoke.yml" <<EOF
# Written by deploy/smoke.sh, on top of the compose file it runs.
services:
  redis:
    image: $REDIS_IMAGE
  gateway:
    environment:
      HF_HUB_OFFLINE: "1"
    volumes:
      - $world:$world:ro
  verifier:
    environment:
      HF_HUB_OFFLINE: "1"
EOF
    cat >"$SMOKE_DIR/smoke.env" <<EOF
OMNIOPD_BIND=$OMNIOPD_BIND
GATEWAY_PORT=$GATEWAY_PORT
GATEWAY_METRICS_PORT=$GATEWAY_METRICS_PORT
VERIFIER_PORT=$VERIFIER_PORT
REDIS_PORT=$REDIS_PORT
OMNIOPD_TEACHERS=$SMOKE_DIR/teachers.yaml
EOF
}

health_of() {
    docker_ inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1" 2>/dev/null
}

wait_healthy() {
    local start=$1 deadline=$(($1 + SMOKE_HEALTH_TIMEOUT_S)) svc id state all last=
    while :; do
        all=1
        local states=()
        for svc in redis gateway verifier; do
            id=$(compose ps -q "$svc" 2>/dev/null)
            state=$([ -n "$id" ] && health_of "$id" || echo missing)
            states+=("$svc=$state")
            case $state in
            running/healthy) ;;
            */unhealthy | exited/* | dead/* | missing)
                say "${states[*]}"
                return 1
                ;;
            *) all=0 ;;
            esac
        done
        if [ "${states[*]}" != "$last" ]; then
            say "$(($(now) - start)) s: ${states[*]}"
            last=${states[*]}
        fi
        [ "$all" = 1 ] && return 0
        [ "$(now)" -ge "$deadline" ] && return 1
        sleep 2
    done
}

cache_entries_in_redis() {
    local port=6379
    [ "$SMOKE_NETWORK" = host ] && port=$REDIS_PORT
    compose exec -T redis redis-cli -p "$port" --scan --pattern 'omniopd:gateway:cache:*' |
        grep -vc ':claim:'
}

# -- main -------------------------------------------------------------------------------------------

main() {
    mkdir -p "$SMOKE_DIR" "$LOGS" || exit 1
    : >"$RESULTS"
    trap finish EXIT
    trap 'say "interrupted"; exit 130' INT TERM
    say "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), scratch $SMOKE_DIR"
    record info date "$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    record info commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    [ -x "$PY" ] || die "no $PY: run \`make setup\` first"

    # 1. the engine
    case $SMOKE_ENGINE in
    running) engine_running || die "no running Docker engine ($DOCKER info failed)" ;;
    own) start_engine ;;
    *)
        if engine_running; then
            say "using the running Docker engine"
        else
            say "no running Docker engine: starting one"
            start_engine
        fi
        ;;
    esac
    local client server driver
    client="$(command -v "$DOCKER") $(docker_ version -f '{{.Client.Version}}' 2>/dev/null)"
    server=$(docker_ version -f '{{.Server.Version}}' 2>/dev/null)
    driver=$(docker_ info -f '{{.Driver}}' 2>/dev/null)
    say "Docker client $client, engine $server (storage driver $driver)"
    record info docker_client "$client"
    record info engine "$server ($driver)"
    record info engine_started "$([ -n "$ENGINE_PID" ] && echo yes || echo no)"
    pass engine "$server"
    find_compose
    if [ -z "$SMOKE_NETWORK" ]; then
        if [ -n "$ENGINE_PID" ] || ! docker_ network inspect bridge >/dev/null 2>&1; then
            SMOKE_NETWORK=host
        else
            SMOKE_NETWORK=bridge
        fi
    fi
    COMPOSE_FILE=$ROOT/docker-compose.yml
    [ "$SMOKE_NETWORK" = host ] && COMPOSE_FILE=$ROOT/docker-compose.host.yml
    record info network "$SMOKE_NETWORK"
    say "network: $SMOKE_NETWORK ($(basename "$COMPOSE_FILE"))"

    # 2.-3. images
    base_images || exit 1
    torch_source
    build_service gateway services/teacher_gateway/Dockerfile || exit 1
    build_service verifier services/verifier/Dockerfile || exit 1
    local image
    for image in "omniopd/gateway:local" "omniopd/verifier:local" "$REDIS_IMAGE" "$PYTHON_IMAGE"; do
        record image_bytes "$image" "$(docker_ image inspect -f '{{.Size}}' "$image")"
    done
    if [ -n "$WHEEL_PID" ]; then
        kill "$WHEEL_PID" 2>/dev/null
        wait "$WHEEL_PID" 2>/dev/null
        WHEEL_PID=
    fi

    # 4. the stack
    local world=${SMOKE_WORLD:-$SMOKE_DIR/world}
    if [ -z "${SMOKE_WORLD:-}" ]; then
        say "the tiny toy world: omniopd-toy tiny --out $world"
        rm -rf "$world"
        "$(dirname "$PY")/omniopd-toy" tiny --out "$world" >"$LOGS/toy.log" 2>&1 ||
            { show_tail "$LOGS/toy.log"; die "omniopd-toy tiny failed"; }
    fi
    world=$(cd "$world" && pwd)
    write_stack_files "$world"
    ports_free "$GATEWAY_PORT" "$GATEWAY_METRICS_PORT" "$VERIFIER_PORT" "$REDIS_PORT" ||
        die "a port the stack needs is taken"
    local start up_rc
    say "starting the stack: ${COMPOSE[*]} -f $(basename "$COMPOSE_FILE") -f $SMOKE_DIR/compose.smoke.yml up -d --no-build"
    start=$(now)
    STACK_STARTED=1
    compose up -d --no-build >>"$LOGS/compose.log" 2>&1
    up_rc=$?
    if [ "$up_rc" = 0 ] && wait_healthy "$start"; then
        record info healthy_s "$(($(now) - start))"
        pass healthy "$(($(now) - start)) s after up"
    else
        show_tail "$LOGS/compose.log" 15
        compose ps
        compose logs --no-color --tail 40
        fail healthy "up exited $up_rc"
        exit 1
    fi
    compose ps

    # 5. checks from the host
    say "checks from the host ($PY)"
    "$PY" "$ROOT/deploy/smoke_checks.py" services --gateway "127.0.0.1:$GATEWAY_PORT" \
        --verifier "http://127.0.0.1:$VERIFIER_PORT" --teacher toy \
        --prompts "$world/data/train.jsonl" --results "$RESULTS" >"$LOGS/checks.json"
    local entries
    entries=$(cache_entries_in_redis)
    if [ "${entries:-0}" -ge 1 ] 2>/dev/null; then
        pass cache_in_redis "$entries cache entries in Redis"
    else
        fail cache_in_redis "no omniopd:gateway:cache:* key in Redis (${entries:-none})"
    fi

    local run=$SMOKE_DIR/run
    rm -rf "$run"
    head -n 8 "$world/data/eval.jsonl" >"$SMOKE_DIR/eval-8.jsonl"
    local train=("$(dirname "$PY")/omniopd-train"
        --method omniopd --gateway "127.0.0.1:$GATEWAY_PORT" --teacher toy
        --verifier "http://127.0.0.1:$VERIFIER_PORT" --device cpu
        --student "$world/student" --dataset "$world/data/train.jsonl"
        --eval-dataset "$SMOKE_DIR/eval-8.jsonl" --output-dir "$run"
        --steps "$TRAIN_STEPS" --batch-size 2 --max-new-tokens 16 --eval-every 0 --save-every 0
        --num-drafts 3 --chunk-tokens 4 --teacher-samples 3 --fork-quantile 0.5
        --min-fork-entropy 0 --chunks-per-response 2 --metric embedding)
    say "training from the host: omniopd-train ${train[*]:1} (log $LOGS/train.log)"
    start=$(now)
    if "${train[@]}" >"$LOGS/train.log" 2>&1; then
        record info train_s "$(($(now) - start))"
        "$PY" "$ROOT/deploy/smoke_checks.py" train --run "$run" --steps "$TRAIN_STEPS" \
            --results "$RESULTS" >>"$LOGS/checks.json"
    else
        show_tail "$LOGS/train.log"
        fail train "omniopd-train exited with an error"
    fi
    # 6. finish (the EXIT trap): teardown, the engine, the summary line
}

# Sourced (the tests read its functions), it defines them and runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
