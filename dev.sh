#!/usr/bin/env bash
# flexgc bootstrap: creates .venv (Python >= 3.11), installs flexgc editable (which generates the gRPC
# code from proto/), then runs what you asked for. `demo` and `flexgc` need the runtime dependencies and
# plotly (the demo's HTML report); `test` adds the dev extras (linters, type checker, test tools,
# deployment validators, JAX).
#
#   ./dev.sh demo [ARGS]    run the local demo cluster (master + workers on loopback)
#   ./dev.sh test [ARGS]    lint, type-check and run the test suite (what .ci/run calls)
#   ./dev.sh bench SUITE [ARGS]  a BENCHMARKS.md table: codes (flexgc bench) or a script of benchmarks/:
#                           signaling, limits, overhead, scale, analysis, models (JAX CNN, BENCHMARKS.md §8),
#                           adapt (adaptive placement, BENCHMARKS.md §10)
#   ./dev.sh flexgc ARGS    any flexgc command, e.g. ./dev.sh flexgc analyze --workers 10 ...
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FLEXGC_VENV:-.venv}
cmd=${1:-demo}; shift || true
case "$cmd" in
  test|bench) extras="[dev]"; stamp="$VENV/.flexgc-installed-dev" ;;
  *)    extras="[report]"; stamp="$VENV/.flexgc-installed" ;;  # the demo writes its HTML report (plotly)
esac
if [[ ! -x "$VENV/bin/python" ]]; then
  PY=${PYTHON:-}
  if [[ -z "$PY" ]]; then
    for c in python3 python3.13 python3.12 python3.11; do
      if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
      then PY=$c; break; fi
    done
  fi
  [[ -n "$PY" ]] || { echo "dev.sh: need Python >= 3.11 (set PYTHON=...)" >&2; exit 2; }
  "$PY" -m venv "$VENV"
fi
# reinstall when the project metadata or the protos changed since the last install
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || setup.py -nt "$stamp" || -n "$(find proto -newer "$stamp" -name '*.proto' 2>/dev/null)" || ! -d flexgc/v1 ]]; then
  echo "dev.sh: installing flexgc into $VENV ..." >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  # setuptools warns that a folder named like the package may shadow it: flexgc/ is that package itself
  PYTHONWARNINGS="ignore:Editable installation" \
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".$extras" >&2
  touch "$stamp"
  # the dev install holds the runtime one: keep that stamp as fresh
  [[ "$extras" != "[dev]" ]] || touch "$VENV/.flexgc-installed"
fi
venv_bin=$(cd "$VENV/bin" && pwd)  # FLEXGC_VENV may be relative or absolute
export PATH="$venv_bin:$PATH"
# large fresh allocations page-fault expensively on small VMs (docs/design.md §7): keep big buffers mapped
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-268435456}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-1073741824}
export MALLOC_TOP_PAD_=${MALLOC_TOP_PAD_:-268435456}

case "$cmd" in
  demo)   exec flexgc demo "$@" ;;
  test)
    ruff check .
    mypy  # the package, tests/ and benchmarks/ (pyproject.toml)
    set +e
    python -m pytest "$@"
    rc=$?
    set -e
    if [[ $rc -eq 5 ]]; then echo "dev.sh: pytest collected no tests: failing" >&2; exit 1; fi
    exit $rc ;;
  bench)
    suite=${1:-codes}; shift || true
    case "$suite" in
      codes) exec flexgc bench "$@" ;;
      signaling|limits|overhead|scale|analysis|models|adapt) exec python "benchmarks/bench_$suite.py" "$@" ;;
      *) echo "usage: ./dev.sh bench codes|signaling|limits|overhead|scale|analysis|models|adapt [ARGS]" >&2; exit 2 ;;
    esac ;;
  flexgc) exec flexgc "$@" ;;
  *) echo "usage: ./dev.sh demo|test|bench|flexgc [ARGS]" >&2; exit 2 ;;
esac
