#!/usr/bin/env bash
# Removes the shaping that apply.sh put on an interface (its root qdisc), restoring the kernel default.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF
Usage: $PROG [--interface IFACE]

Deletes the root qdisc of IFACE (and everything under it), so IFACE falls back to the kernel's
default qdisc. Does nothing when no root qdisc is configured; safe to run twice.

  --interface IFACE   interface to clear (default: the interface of the default route)
  -h, --help          this text

Exit codes: 0 done, 1 tc failed, 2 usage error, 4 not root or no CAP_NET_ADMIN, 5 interface not
found, 6 tc/ip (iproute2) not installed.
EOF
}

parse_interface_args "$@"
need_net_admin
clear_root "$iface"
printf '%s: %s: %s\n' "$PROG" "$iface" "$(tc qdisc show dev "$iface" root | head -n 1)"
