#!/usr/bin/env bash
# Docker HEALTHCHECK of the flexgc image, which serves both roles: finds the flexgc process and
#   master: asks its gRPC health service (`flexgc health`, service "") on 127.0.0.1, at the port given
#           by --port on its command line, else FLEXGC_PORT, else 50051;
#   worker: a worker is a gRPC client and serves nothing to ask, so it is healthy while it runs.
# Exit 0 healthy, 1 unhealthy (Docker's convention). Kubernetes ignores HEALTHCHECK: the manifests
# under deploy/k8s use native gRPC probes instead.
set -euo pipefail

role="" port=""
for cmdline in /proc/[0-9]*/cmdline; do
  args=()
  mapfile -d '' -t args <"$cmdline" 2>/dev/null || continue
  seen_flexgc=0
  for i in "${!args[@]}"; do
    arg=${args[$i]}
    if ((!seen_flexgc)); then
      [[ "$arg" == flexgc || "$arg" == */flexgc ]] && seen_flexgc=1
      continue
    fi
    case "$arg" in
      master | worker) [[ -n "$role" ]] || role=$arg ;;
      --port) port=${args[$((i + 1))]:-} ;;
      --port=*) port=${arg#--port=} ;;
    esac
  done
  [[ -z "$role" ]] || break
done

case "$role" in
  master) exec flexgc health --target "127.0.0.1:${port:-${FLEXGC_PORT:-50051}}" --timeout-s 2 ;;
  worker) exit 0 ;;
  *) echo "healthcheck: no 'flexgc master' or 'flexgc worker' process in this container" >&2; exit 1 ;;
esac
