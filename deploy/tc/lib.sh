# shellcheck shell=bash
# Shared helpers of apply.sh, clear.sh and status.sh; sourced, never run.
#
# Exit codes used by all three scripts:
#   0 done   1 tc failed for another reason   2 usage error   3 no sch_netem   4 no root / CAP_NET_ADMIN
#   5 interface not found   6 tc (iproute2) not installed

PROG=${0##*/}
DIE_NOTE=""  # appended to every error message once set (e.g. what state the interface was left in)

die() {  # die CODE MESSAGE...
  local code=$1
  shift
  printf '%s: error: %s%s\n' "$PROG" "$*" "${DIE_NOTE:+ [$DIE_NOTE]}" >&2
  exit "$code"
}

need_tc() {
  command -v tc >/dev/null 2>&1 || die 6 "'tc' not found: install iproute2 (Debian/Ubuntu: apt-get install iproute2)"
  command -v ip >/dev/null 2>&1 || die 6 "'ip' not found: install iproute2 (Debian/Ubuntu: apt-get install iproute2)"
}

# Changing qdiscs needs CAP_NET_ADMIN in the network namespace: root on a host, and in a container
# root *plus* `cap_add: [NET_ADMIN]` (uid 0 alone is not enough there), so test the capability bit.
need_net_admin() {
  local capeff
  capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status 2>/dev/null || true)
  if [[ -z "$capeff" ]]; then
    [[ $(id -u) -eq 0 ]] || die 4 "changing qdiscs needs root (CAP_NET_ADMIN); run with sudo"
    return 0
  fi
  if (( (16#$capeff >> 12) & 1 )); then
    return 0
  fi
  if [[ $(id -u) -ne 0 ]]; then
    die 4 "changing qdiscs needs root with CAP_NET_ADMIN, but this runs as uid $(id -u); on a host use" \
      "sudo; in a container run as user 0 with cap_add: [NET_ADMIN]"
  fi
  die 4 "running as root but without CAP_NET_ADMIN (CapEff=$capeff); in a container add" \
    "cap_add: [NET_ADMIN] (docker run --cap-add NET_ADMIN; Kubernetes securityContext.capabilities.add)"
}

# The interface of the default route: eth0 in a container, the uplink on a host.
default_interface() {
  local dev
  dev=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  [[ -n "$dev" ]] || die 5 "no default route to pick an interface from; pass --interface IFACE" \
    "(interfaces here: $(list_interfaces))"
  printf '%s\n' "$dev"
}

list_interfaces() {
  ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); printf "%s%s", sep, $2; sep = " "}'
}

need_interface() {
  [[ -e "/sys/class/net/$1" ]] || ip link show dev "$1" >/dev/null 2>&1 ||
    die 5 "interface '$1' not found (interfaces here: $(list_interfaces))"
}

# Parses the only option of clear.sh and status.sh, [--interface IFACE] (or -h), into the global
# `iface`, checked to exist; the caller defines usage().
parse_interface_args() {
  iface=""
  while (($# > 0)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --interface)
        (($# >= 2)) || die 2 "$1 needs a value (see --help)"
        iface=$2
        shift 2 ;;
      *) usage >&2; die 2 "unknown argument '$1'" ;;
    esac
  done
  need_tc
  [[ -n "$iface" ]] || iface=$(default_interface)
  need_interface "$iface"
}

# Handle of the root qdisc, e.g. "1:"; "0:" is the kernel's default (noqueue, pfifo_fast, mq, fq_codel).
root_handle() {
  tc qdisc show dev "$1" root 2>/dev/null | awk '{print $3; exit}'
}

# Removes whatever root qdisc was configured (and its children), restoring the kernel default.
# Prints what it removed; a no-op when the default is in place.
clear_root() {
  local iface=$1 handle
  handle=$(root_handle "$iface")
  if [[ -z "$handle" || "$handle" == "0:" ]]; then
    return 0
  fi
  printf '%s: removing root qdisc: %s\n' "$PROG" "$(tc qdisc show dev "$iface" root | head -n 1)" >&2
  run_tc qdisc del dev "$iface" root
}

# Runs `tc ARGS...`, mapping a failure to the exit codes above: tc prints "Operation not permitted"
# without CAP_NET_ADMIN and "Specified qdisc kind is unknown" when the kernel lacks the qdisc module.
run_tc() {
  local out
  if out=$(tc "$@" 2>&1); then
    [[ -z "$out" ]] || printf '%s\n' "$out" >&2
    return 0
  fi
  tc_failed "tc $*" "$out"
}

tc_failed() {  # tc_failed COMMAND OUTPUT
  local cmd=$1 out=${2//$'\n'/ }
  case "$out" in
    *"Operation not permitted"*)
      die 4 "'$cmd' was refused (tc: $out); it needs root with CAP_NET_ADMIN (container: cap_add: [NET_ADMIN])" ;;
    *"qdisc kind is unknown"*)
      if [[ "$cmd" == *" netem "* ]]; then
        die 3 "this kernel has no sch_netem, so delay, jitter and loss cannot be applied ('$cmd' said: $out)." \
          "On a host, install the kernel's extra modules and run 'modprobe sch_netem'; a container uses its" \
          "host's kernel. A rate limit alone (--rate, tbf) does not need netem."
      fi
      die 1 "'$cmd': this kernel lacks the qdisc (tc: $out)" ;;
    *)
      die 1 "'$cmd' failed: $out" ;;
  esac
}
