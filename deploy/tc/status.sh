#!/usr/bin/env bash
# Shows the qdiscs (with counters) on an interface: what apply.sh configured and what it has done.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF
Usage: $PROG [--interface IFACE]

Prints 'tc -s qdisc show' for IFACE: the netem/tbf settings and their counters (sent, dropped,
overlimits). Needs no privileges.

  --interface IFACE   interface to show (default: the interface of the default route)
  -h, --help          this text

Exit codes: 0 done, 2 usage error, 5 interface not found, 6 tc/ip (iproute2) not installed.
EOF
}

parse_interface_args "$@"
handle=$(root_handle "$iface")
if [[ -z "$handle" || "$handle" == "0:" ]]; then
  printf '%s: not shaped (kernel default qdisc)\n' "$iface"
else
  printf '%s: shaped\n' "$iface"
fi
tc -s qdisc show dev "$iface"
