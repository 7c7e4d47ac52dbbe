# shellcheck shell=bash
# Sourced by .ci/run: headless Chromium for the tests marked `browser` (tests/report/test_browser.py).
#
#   apt   Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver; ~20 s). The
#         tests drive it with selenium through that chromedriver, headless with --no-sandbox (CI runs as
#         root), no background networking, a fresh --user-data-dir per test module.
#
# Nothing is started here: each test module starts its own browser and quits it. Where the browser cannot
# be installed it says why and exports FLEXGC_BROWSER_UNAVAILABLE; the browser tests then skip with it.

_fgb_log() { printf 'setup-browser: %s\n' "$*" >&2; }

setup_browser() {
  if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    _fgb_log "$(/usr/bin/chromium --version 2>/dev/null | head -1), $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)"
    return 0
  fi
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    export FLEXGC_BROWSER_UNAVAILABLE="chromium is not installed and this run cannot apt-get it (needs root and apt)"
    _fgb_log "$FLEXGC_BROWSER_UNAVAILABLE"
    return 0
  fi
  _fgb_log "installing chromium chromium-driver (apt)"
  local log
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >"$log" 2>&1; then
    tail -n 5 "$log" >&2
    export FLEXGC_BROWSER_UNAVAILABLE="apt-get install chromium chromium-driver failed (see the CI log)"
    _fgb_log "$FLEXGC_BROWSER_UNAVAILABLE"
  fi
  rm -f "$log"
}

teardown_browser() { :; }  # nothing to stop: the tests quit their browsers
