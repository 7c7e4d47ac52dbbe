#!/usr/bin/env bash
# Entrypoint of the flexgc image (both roles): optionally shapes this container's network with tc,
# then runs `flexgc "$@"` as the unprivileged user (uid 10001), never as root.
#
# Non-root vs. NET_ADMIN: changing qdiscs needs root with CAP_NET_ADMIN, and the image runs as uid
# 10001 by default. A container that wants shaping is therefore started as user 0 with
# cap_add NET_ADMIN (compose: `user: "0"`; Kubernetes: runAsUser 0 and capabilities NET_ADMIN, SETUID,
# SETGID). This script applies tc as root and then drops to uid/gid 10001 with setpriv: no groups, no
# inheritable or ambient capabilities, and no_new_privs, so flexgc runs with no capabilities at all.
# Started as non-root (the default), it execs flexgc directly, and FLEXGC_TC_* is an error.
#
# Environment (all optional; empty means unset):
#   FLEXGC_TC_DELAY, FLEXGC_TC_JITTER, FLEXGC_TC_LOSS   netem delay/jitter/loss, e.g. 50ms, 5ms, 1%
#   FLEXGC_TC_RATE, FLEXGC_TC_BURST                     tbf rate limit, e.g. 20mbit (burst: default)
#   FLEXGC_TC_INTERFACE                                 interface (default: that of the default route)
#   FLEXGC_RUN_UID, FLEXGC_RUN_GID                      whom to drop to when started as root (10001)
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
run_uid=${FLEXGC_RUN_UID:-10001}
run_gid=${FLEXGC_RUN_GID:-10001}

tc_args=()
for pair in delay:FLEXGC_TC_DELAY jitter:FLEXGC_TC_JITTER loss:FLEXGC_TC_LOSS rate:FLEXGC_TC_RATE \
  burst:FLEXGC_TC_BURST interface:FLEXGC_TC_INTERFACE; do
  name=${pair#*:}
  value=${!name:-}
  [[ -z "$value" ]] || tc_args+=("--${pair%%:*}" "$value")
done

if ((${#tc_args[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "entrypoint: FLEXGC_TC_* asks for tc shaping (${tc_args[*]}), but the container runs as uid" \
      "$(id -u); tc needs root with NET_ADMIN. Start it as user 0 with cap_add NET_ADMIN (compose:" \
      "user: \"0\"); this entrypoint drops to uid $run_uid before it starts flexgc." >&2
    exit 4
  fi
  "$here/tc/apply.sh" "${tc_args[@]}"
fi

if [[ $(id -u) -eq 0 ]]; then
  home=$(getent passwd "$run_uid" | cut -d: -f6 || true)
  export HOME=${home:-/tmp}
  exec setpriv --reuid="$run_uid" --regid="$run_gid" --clear-groups --inh-caps=-all --no-new-privs \
    -- flexgc "$@"
fi
exec flexgc "$@"
