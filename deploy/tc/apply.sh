#!/usr/bin/env bash
# Shapes the egress of one network interface with tc: netem delay/jitter/loss and/or a tbf rate limit.
# Works on a host and inside a container (which needs root plus cap_add NET_ADMIN). See usage below.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF
Usage: $PROG [--interface IFACE] [--delay TIME [--jitter TIME]] [--loss PERCENT]
                [--rate RATE [--burst SIZE] [--queue-latency TIME]] [--netem-limit PACKETS] [--dry-run]

Shapes what IFACE sends (egress only; shape each end for a symmetric link). Replaces any root
qdisc already on IFACE; clear.sh removes the shaping again, status.sh shows it.

  --interface IFACE      interface to shape (default: the interface of the default route)
  --delay TIME           netem delay added to every packet, e.g. 50ms, 1.5ms, 200us, 1s
  --jitter TIME          netem jitter around --delay (uniform), e.g. 10ms; reorders packets
  --loss PERCENT         netem random loss, e.g. 1% or 0.5%
  --rate RATE            tbf rate limit, e.g. 20mbit, 1gbit, 500kbit, 10mbps (mbps = megabytes/s)
  --burst SIZE           tbf bucket size (default: 10 ms worth of RATE, at least 32kb), e.g. 64kb
  --queue-latency TIME   longest a packet may wait in the tbf queue before it is dropped (default 100ms)
  --netem-limit PACKETS  netem queue length; raise it for large delay x rate (default 10000)
  --dry-run              print the tc commands instead of running them (needs no privileges)
  -h, --help             this text

Delay, jitter and loss need the kernel module sch_netem; a rate alone uses tbf and does not. With
both, tbf runs as netem's child (delay first, then the rate limit).

Exit codes: 0 done, 1 tc failed, 2 usage error, 3 no sch_netem in this kernel, 4 not root or no
CAP_NET_ADMIN, 5 interface not found, 6 tc/ip (iproute2) not installed. On a failure after the
old shaping was removed, IFACE is left with the kernel's default qdisc (no shaping).

Examples:
  sudo $PROG --interface eth0 --delay 50ms --jitter 5ms --loss 0.5%
  sudo $PROG --interface eth0 --rate 20mbit
  sudo $PROG --interface veth-w1 --delay 20ms --rate 100mbit --dry-run
EOF
}

TIME_RE='^[0-9]+(\.[0-9]+)?(us|usec|ms|msec|s|sec|secs)$'
PERCENT_RE='^[0-9]+(\.[0-9]+)?%$'
RATE_RE='^[0-9]+(\.[0-9]+)?([kmgt]i?)?(bit|bps)$'
SIZE_RE='^[0-9]+([kmg]?b|[kmg]|[kmg]?bit)?$'

check() {  # check NAME VALUE REGEX EXAMPLE
  local lower=${2,,}
  [[ "$lower" =~ $3 ]] || die 2 "$1 '$2' is not valid; expected something like $4 (see --help)"
}

# RATE in bits per second (tc: k/m/g/t = 10^3.., ki/mi/gi/ti = 2^10.., bps = bytes per second).
rate_bits() {
  awk -v r="${1,,}" 'BEGIN {
    match(r, /^[0-9]+(\.[0-9]+)?/); n = substr(r, 1, RLENGTH) + 0; u = substr(r, RLENGTH + 1)
    base = (u ~ /^[kmgt]i/) ? 1024 : 1000; m = 1
    if (u ~ /^k/) m = base; else if (u ~ /^m/) m = base ^ 2; else if (u ~ /^g/) m = base ^ 3; else if (u ~ /^t/) m = base ^ 4
    if (u ~ /bps$/) m *= 8
    printf "%.0f\n", n * m }'
}

iface="" delay="" jitter="" loss="" rate="" burst="" queue_latency=100ms netem_limit=10000 dry_run=0
while (($# > 0)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
    --interface | --delay | --jitter | --loss | --rate | --burst | --queue-latency | --netem-limit)
      (($# >= 2)) || die 2 "$1 needs a value (see --help)" ;;
    *) usage >&2; die 2 "unknown argument '$1'" ;;
  esac
  case "$1" in
    --interface) iface=$2 ;;
    --delay) delay=$2 ;;
    --jitter) jitter=$2 ;;
    --loss) loss=$2 ;;
    --rate) rate=$2 ;;
    --burst) burst=$2 ;;
    --queue-latency) queue_latency=$2 ;;
    --netem-limit) netem_limit=$2 ;;
  esac
  shift 2
done

if [[ -z "$delay$jitter$loss$rate" ]]; then
  die 2 "nothing to apply: give --delay, --loss and/or --rate (clear.sh removes shaping; see --help)"
fi
[[ -z "$jitter" || -n "$delay" ]] || die 2 "--jitter $jitter needs --delay (jitter varies the delay around it)"
[[ -z "$delay" ]] || check --delay "$delay" "$TIME_RE" "50ms"
[[ -z "$jitter" ]] || check --jitter "$jitter" "$TIME_RE" "10ms"
if [[ -n "$loss" ]]; then
  check --loss "$loss" "$PERCENT_RE" "1%"
  awk -v p="${loss%\%}" 'BEGIN {exit !(p <= 100)}' || die 2 "--loss $loss is above 100%"
fi
check --queue-latency "$queue_latency" "$TIME_RE" "100ms"
[[ "$netem_limit" =~ ^[1-9][0-9]*$ ]] || die 2 "--netem-limit '$netem_limit' must be a positive number of packets"
if [[ -n "$rate" ]]; then
  check --rate "$rate" "$RATE_RE" "20mbit"
  bits=$(rate_bits "$rate")
  ((bits >= 8000)) || die 2 "--rate $rate is below 1kbps (8kbit); tbf cannot shape that slowly"
  if [[ -z "$burst" ]]; then
    burst=$((bits / 8 / 100))   # 10 ms at RATE
    ((burst >= 32768)) || burst=32768
  else
    check --burst "$burst" "$SIZE_RE" "64kb"
  fi
elif [[ -n "$burst" ]]; then
  die 2 "--burst $burst needs --rate"
fi

need_tc
[[ -n "$iface" ]] || iface=$(default_interface)
need_interface "$iface"

commands=()
if [[ -n "$delay$loss" ]]; then
  netem="qdisc add dev $iface root handle 1: netem limit $netem_limit"
  [[ -z "$delay" ]] || netem+=" delay $delay${jitter:+ $jitter}"
  [[ -z "$loss" ]] || netem+=" loss $loss"
  commands+=("$netem")
  [[ -z "$rate" ]] || commands+=("qdisc add dev $iface parent 1:1 handle 10: tbf rate $rate burst $burst latency $queue_latency")
else
  commands+=("qdisc add dev $iface root handle 1: tbf rate $rate burst $burst latency $queue_latency")
fi

if ((dry_run)); then
  printf 'tc qdisc del dev %s root   # only if a root qdisc is configured\n' "$iface"
  printf 'tc %s\n' "${commands[@]}"
  exit 0
fi

need_net_admin
clear_root "$iface"
DIE_NOTE="$iface was left with the kernel's default qdisc, not shaped"
for command in "${commands[@]}"; do
  read -r -a words <<<"$command"
  run_tc "${words[@]}"
done
printf '%s: %s shaped: %s\n' "$PROG" "$iface" "$(tc qdisc show dev "$iface" | tr '\n' ';' | sed 's/; *$//; s/ *;/;/g')"
