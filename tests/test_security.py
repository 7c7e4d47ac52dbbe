"""TLS, mutual TLS and the join token, over real connections."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import trustme

from flexgc.common import wire
from flexgc.common.config import worker_config
from flexgc.master.server import serve
from flexgc.v1 import coordinator_pb2 as pb
from flexgc.v1 import coordinator_pb2_grpc as pb_grpc
from flexgc.worker.client import run_worker
from tests.helpers import centralized_params, job_config

TOKEN = "s3cret-join-token-7f1d"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("worker.flexgc")
    paths = {"ca": root / "ca.pem", "server_cert": root / "server.pem", "server_key": root / "server.key",
             "client_cert": root / "client.pem", "client_key": root / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    return {k: str(v) for k, v in paths.items()}


class MasterThread:
    """The master's event loop in a background thread (so the test can capture its logs)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.port: int | None = None
        self.ready = threading.Event()
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def on_port(port: int) -> None:
                self.port = port
                self.ready.set()

            self.summary = await serve(self.cfg, on_port=on_port, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def __enter__(self) -> MasterThread:
        self.thread.start()
        assert self.ready.wait(30), "master did not start"
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


def run_workers(cfg: Any, port: int, **overrides: Any) -> list[int]:
    async def main() -> list[int]:
        workers = [run_worker(worker_config(master=f"localhost:{port}", worker_id=f"w{i}", slot=i, **overrides))
                   for i in range(cfg.workers)]
        return list(await asyncio.wait_for(asyncio.gather(*workers), 60))

    return asyncio.run(main())


def test_mutual_tls_job_runs_and_token_never_appears_in_logs(tmp_path: Path, pki: dict[str, str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg = job_config(tmp_path, workers=3, code="crc:s=1", iterations=3, token=TOKEN, host="localhost",
                     tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=pki["ca"])
    caplog.set_level(logging.DEBUG)
    with MasterThread(cfg) as master:
        assert master.port is not None
        codes = run_workers(cfg, master.port, token=TOKEN, tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                            tls_key=pki["client_key"])
        master.thread.join(30)
    assert codes == [0, 0, 0]
    assert master.summary is not None and master.summary["exact_iterations"] == 3
    reference = centralized_params(cfg)
    assert np.linalg.norm(master.summary["params"] - reference) <= 1e-9 * np.linalg.norm(reference)
    assert TOKEN not in caplog.text
    assert TOKEN not in (tmp_path / "summary.json").read_text()


def _join(port: int, creds: grpc.ChannelCredentials | None, token: str) -> grpc.StatusCode:
    target = f"localhost:{port}"
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    try:
        pb_grpc.CoordinatorStub(channel).Join(pb.JoinRequest(worker_id="intruder", preferred_slot=-1), timeout=5,
                                              metadata=wire.token_metadata(token))
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    finally:
        channel.close()


def test_unknown_workers_are_rejected(tmp_path: Path, pki: dict[str, str]) -> None:
    cfg = job_config(tmp_path, workers=2, code="uncoded", iterations=1, token=TOKEN, host="localhost",
                     join_timeout_s=60,
                     tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=pki["ca"])
    ca = Path(pki["ca"]).read_bytes()
    with_client_cert = grpc.ssl_channel_credentials(ca, Path(pki["client_key"]).read_bytes(),
                                                    Path(pki["client_cert"]).read_bytes())
    with MasterThread(cfg) as master:
        assert master.port is not None
        # no client certificate: the TLS handshake fails
        assert _join(master.port, grpc.ssl_channel_credentials(ca), TOKEN) == grpc.StatusCode.UNAVAILABLE
        # plaintext against a TLS port
        assert _join(master.port, None, TOKEN) == grpc.StatusCode.UNAVAILABLE
        # valid certificate, wrong or missing token
        assert _join(master.port, with_client_cert, "wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert _join(master.port, with_client_cert, "") == grpc.StatusCode.UNAUTHENTICATED
        # a worker with a wrong token gives up at once with exit code 2
        rc = asyncio.run(run_worker(worker_config(master=f"localhost:{master.port}", token="wrong",
                                                  tls_ca=pki["ca"], tls_cert=pki["client_cert"],
                                                  tls_key=pki["client_key"])))
        assert rc == 2
    assert master.summary is not None
    assert master.summary["rejected"].get("AuthError", 0) >= 3


@pytest.mark.parametrize(("tls", "needle"), [
    ({"tls_ca": "ca"}, "the master probably requires a client certificate (mutual TLS: set --tls-cert and --tls-key)"),
    ({}, "the master probably requires TLS (set --tls-ca"),
    ({"tls_ca": "other_ca", "tls_cert": "client_cert", "tls_key": "client_key"},
     "the master's certificate is not signed by the CA in --tls-ca (unknown CA)"),
])
def test_a_worker_names_its_tls_failure_at_warning_once(tmp_path: Path, pki: dict[str, str],
                                                       caplog: pytest.LogCaptureFixture, tls: dict[str, str],
                                                       needle: str) -> None:
    # Prepare: an mTLS master; the worker lacks what it needs
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    paths = {**pki, "other_ca": str(tmp_path / "other.pem")}
    cfg = job_config(tmp_path / "run", workers=1, code="uncoded", iterations=1, host="localhost", join_timeout_s=60,
                     tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=pki["ca"])
    with MasterThread(cfg) as master, caplog.at_level("INFO", logger="flexgc.worker.client"):
        # Execute: it retries for 1.5 s, then gives up
        rc = asyncio.run(run_worker(worker_config(master=f"localhost:{master.port}", worker_id="w0",
                                                  join_timeout_s=1.5, **{k: paths[v] for k, v in tls.items()})))

    # Assert: exit 1; the reason named once at WARNING (the retries in between at INFO)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert rc == 1
    assert len(warnings) == 1 and needle in warnings[0], warnings
    assert any("giving up" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
