"""`flexgc view`: the report page served on localhost, following run.jsonl as the master appends to it.

The run log stays the one source of truth: the viewer is a separate process that only reads the files
(the master does not know it exists). It re-reads a run only when a page asks (at most every
`min_refresh_s`), and then only the bytes appended since its last read, so an idle viewer costs nothing
and a watched one a few milliseconds per iteration.

Routes: `/` the page (live mode), `/api/data?v=VERSION&have=N,N` what changed since the page's version
(the new iterations' timelines and every chart), `/api/timeline?run=R&i=ITERATION` one timeline, `/healthz`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flexgc.common.errors import FlexgcError
from flexgc.report.data import RunData, comparison_target, run_labels
from flexgc.report.page import LIVE_TAIL, charts_payload, page_data, render, run_meta, targets_payload

_log = logging.getLogger(__name__)


def _refresh(run: RunData) -> bool:
    """Re-read one run for the live view: what it cannot read (a bad job.json, say) is shown on the page and
    logged once, and the page keeps what it had, rather than the request failing."""
    try:
        return run.refresh()
    except FlexgcError as exc:
        if run.error != str(exc):
            _log.warning("%s", exc)
            run.error = str(exc)
            return True
        return False


class Viewer:
    """The viewer's state: the runs it follows and a version that grows whenever one of them changed."""

    def __init__(self, run_dirs: Sequence[Path | str], min_refresh_s: float = 0.2) -> None:
        self.runs = [RunData.open(p, wait=True) for p in run_dirs]
        self.min_refresh_s = min_refresh_s
        self.version = 1
        self._lock = threading.Lock()
        self._refreshed = time.monotonic()
        self._charts: tuple[int, list[dict[str, Any]], dict[str, Any]] | None = None  # and the targets

    def refresh(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._refreshed < self.min_refresh_s:
                return
            self._refreshed = now
            changed = [_refresh(run) for run in self.runs]  # every run, not just up to the first change
            if any(changed):
                self.version += 1

    def page(self) -> str:
        self.refresh()
        with self._lock:
            return render(page_data(self.runs, live=True, version=self.version), title="flexgc view")

    def update(self, version: int, have: list[int]) -> dict[str, Any]:
        """What a page at `version`, holding `have[r]` iterations of run r, is missing."""
        self.refresh()
        with self._lock:
            if version == self.version:
                return {"changed": False, "version": version}
            labels = run_labels(self.runs)
            metas = []
            for r, (run, label) in enumerate(zip(self.runs, labels)):
                meta = run_meta(run, label)
                start = max(have[r] if r < len(have) else 0, len(run.records) - LIVE_TAIL, 0)
                meta["timeline"] = {str(run.records[j]["iteration"]): run.timeline_entry(j)
                                    for j in range(start, len(run.records))}
                metas.append(meta)
            if self._charts is None or self._charts[0] != self.version:
                target, rule = comparison_target(self.runs)
                self._charts = (self.version, charts_payload(self.runs, labels, target),
                                targets_payload(self.runs, labels, target, rule))
            return {"changed": True, "version": self.version, "runs": metas, "charts": self._charts[1],
                    "targets": self._charts[2]}

    def timeline(self, r: int, iteration: int) -> dict[str, Any] | None:
        with self._lock:
            if not 0 <= r < len(self.runs):
                return None
            run = self.runs[r]
            for j in range(len(run.records) - 1, -1, -1):
                if run.records[j]["iteration"] == iteration:
                    return run.timeline_entry(j)
            return None


def _handler(viewer: Viewer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "flexgc-view"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            try:
                if url.path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8", viewer.page().encode())
                elif url.path == "/api/data":
                    have = [int(x) for x in query.get("have", [""])[0].split(",") if x.strip()]
                    body = viewer.update(int(query.get("v", ["0"])[0]), have)
                    self._json(body)
                elif url.path == "/api/timeline":
                    entry = viewer.timeline(int(query["run"][0]), int(query["i"][0]))
                    if entry is None:
                        self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no such iteration")
                    else:
                        self._json(entry)
                elif url.path == "/healthz":  # for a container's healthcheck: no file is read
                    self._send(HTTPStatus.OK, "text/plain", b"ok\n")
                elif url.path == "/favicon.ico":
                    self._send(HTTPStatus.NO_CONTENT, "image/x-icon", b"")
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
            except (KeyError, ValueError) as exc:
                self._send(HTTPStatus.BAD_REQUEST, "text/plain", f"bad request: {exc}".encode())

        def _json(self, body: Any) -> None:
            self._send(HTTPStatus.OK, "application/json", json.dumps(body, separators=(",", ":"),
                                                                     allow_nan=False).encode())

        def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                _log.debug("client left path=%s", self.path)  # a closed tab or browser: nothing to answer

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("request " + format, *args)

    return Handler


def make_server(viewer: Viewer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for `viewer`; port 0 picks a free port (server.server_port)."""
    server = ThreadingHTTPServer((host, port), _handler(viewer))
    server.daemon_threads = True
    return server
