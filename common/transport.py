"""Channel and server builders for both sides: message-size limits, keepalive and (m)TLS in one place.

From docs/design.md §7: the default 4 MiB receive limit is too small for a 2^20-element float32 vector with
framing, so both ends set the send and receive limits explicitly, and vectors are chunked below them.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from flexgc.common.errors import ConfigError

CHUNK_BYTES = 1 << 20            # 1 MiB: measured fastest for gRPC streaming (docs/design.md §7)
MAX_MESSAGE_BYTES = 8 << 20       # every message is a chunk of <= CHUNK_BYTES plus a small header
# The master's gRPC receive limit is twice the application limit, so a message between the two reaches
# `wire`, which refuses it with INVALID_ARGUMENT and a counted rejection; beyond that gRPC core answers
# RESOURCE_EXHAUSTED itself, before any servicer code runs (not counted by flexgc).
SERVER_RECEIVE_BYTES = 2 * MAX_MESSAGE_BYTES

_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Certificate paths. server: cert+key (+ca to require client certs); client: ca (+cert+key for mTLS)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether any certificate is configured (then the connection is TLS)."""
        return bool(self.cert or self.key or self.ca)


_PEM_OF = {"tls_cert": b"CERTIFICATE", "tls_ca": b"CERTIFICATE", "tls_key": b"PRIVATE KEY"}


def _read(path: str | None, field: str) -> bytes | None:
    """The PEM file of `field`, checked to hold what that field needs (a certificate, or a private key): a file
    given for the wrong option would otherwise fail later as a TLS handshake that says something else."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{field}={path!r}: cannot read ({exc.strerror})") from None
    want = _PEM_OF[field]
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{field}={path!r}: not a PEM file (no '-----BEGIN' line); {field} needs a PEM "
                          f"{want.decode().lower()}")
    if b"-----BEGIN " + want not in data and not (want == b"PRIVATE KEY" and b"PRIVATE KEY-----" in data):
        holds = "a private key" if b"PRIVATE KEY-----" in data else "a certificate" if b"CERTIFICATE-----" in data \
            else "another PEM object"
        raise ConfigError(f"{field}={path!r} holds {holds}, not a {want.decode().lower()}: "
                          + ("give the CA's certificate (the key stays with whoever signs)" if field == "tls_ca" else
                             "give the certificate here, its key to --tls-key" if field == "tls_cert" else
                             "give the private key of --tls-cert here"))
    return data


def _limits(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """gRPC server options: message limits (receive twice the send limit, see above) and keepalive."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", 2 * max_message_bytes), *_KEEPALIVE, ("grpc.so_reuseport", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000)]


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """gRPC channel options: message limits and keepalive."""
    return [*_limits(max_message_bytes), *_KEEPALIVE]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """Server TLS credentials (client certificates required when a CA is given), or None."""
    if not tls.enabled:
        return None
    if not (tls.cert and tls.key):
        raise ConfigError("tls_cert and tls_key are both required on the master when TLS is on "
                          f"(got tls_cert={tls.cert!r}, tls_key={tls.key!r})")
    key, cert = _read(tls.key, "tls_key"), _read(tls.cert, "tls_cert")
    ca = _read(tls.ca, "tls_ca")
    assert key is not None and cert is not None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials | None:
    """Channel TLS credentials (with a client certificate for mTLS), or None."""
    if not tls.enabled:
        return None
    if bool(tls.cert) != bool(tls.key):
        raise ConfigError("tls_cert and tls_key go together on the worker (client certificate for mTLS); "
                          f"got tls_cert={tls.cert!r}, tls_key={tls.key!r}")
    return grpc.ssl_channel_credentials(root_certificates=_read(tls.ca, "tls_ca"),
                                        private_key=_read(tls.key, "tls_key"),
                                        certificate_chain=_read(tls.cert, "tls_cert"))


def aio_server(max_message_bytes: int = MAX_MESSAGE_BYTES,
               interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    """A grpc.aio server with flexgc's limits and keepalive (and `interceptors`, e.g. the token check)."""
    return grpc.aio.server(options=server_options(max_message_bytes), interceptors=list(interceptors))


def bind(server: grpc.aio.Server, address: str, tls: TlsConfig) -> int:
    """Add a port (insecure or TLS); returns the bound port (address may end in :0)."""
    creds = server_credentials(tls)
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {address}: {bind_failure(address)}")
    return port


def bind_failure(address: str) -> str:
    """Why binding HOST:PORT fails, in words a user can act on (gRPC only says that it failed): the host is not
    an address of this machine, the port is in use, or it needs privileges."""
    import errno
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError):
        return f"cannot resolve host {host!r} (--host: an address or name of this machine, or 0.0.0.0 for all)"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    return (f"{host} is not an address of this machine (--host: one of its addresses, or 0.0.0.0 "
                            f"for all of them)")
                if exc.errno == errno.EADDRINUSE:
                    return "another process has the port (pick another --port, or 0 for a free one)"
                if exc.errno == errno.EACCES:
                    return f"permission denied for port {port} (ports below 1024 need privileges; pick another --port)"
                return f"{exc.strerror}"
    return "another process has the port? pick another --port, or 0 for a free one"


def aio_channel(target: str, tls: TlsConfig, max_message_bytes: int = MAX_MESSAGE_BYTES,
                server_name: str | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` with flexgc's limits, keepalive and (m)TLS."""
    creds = channel_credentials(tls)
    options = channel_options(max_message_bytes)
    if server_name:
        options = [*options, ("grpc.ssl_target_name_override", server_name)]  # type: ignore[list-item]
    if creds:
        return grpc.aio.secure_channel(target, creds, options=options)
    return grpc.aio.insecure_channel(target, options=options)


def describe_failure(code: grpc.StatusCode, details: str, target: str, tls: TlsConfig) -> str:
    """One line saying why a call to `target` failed, in words a user can act on (what gRPC says of a
    refused port, an unknown host or a failed TLS handshake, read together with this side's TLS setup)."""
    text = details or ""
    if code is not grpc.StatusCode.UNAVAILABLE:
        return f"{code.name}: {text}" if text else code.name
    if "Connection refused" in text:
        return f"connection refused by {target} (is the master running and listening on that port?)"
    if "resolving" in text or "Domain name not found" in text or "DNS" in text:
        return f"cannot resolve the host of {target}"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"TLS handshake with {target} failed: the master's certificate is not signed by the CA in "
                f"--tls-ca (unknown CA)")
    if "WRONG_VERSION_NUMBER" in text or ("handshake" in text.lower() and not tls.enabled):
        return f"TLS handshake with {target} failed: the master does not speak TLS (drop --tls-ca)"
    if "Socket closed" in text or "handshake" in text.lower():
        if not tls.enabled:
            return (f"{target} closed the connection at once: the master probably requires TLS (set --tls-ca, "
                    f"and --tls-cert/--tls-key if it requires client certificates)")
        if not tls.cert:
            return (f"{target} closed the TLS handshake: the master probably requires a client certificate "
                    f"(mutual TLS: set --tls-cert and --tls-key)")
        return (f"{target} closed the TLS handshake: is the client certificate signed by the CA the master "
                f"trusts (its --tls-ca)?")
    if "Deadline" in text or code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {target}"
    return f"{target} unavailable: {text}"


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals a master or worker stops on: SIGTERM, and SIGINT unless this process started with it ignored
    (a background job, or a child of a local cluster, whose parent stops it with SIGTERM: the Unix convention
    keeps an inherited SIG_IGN)."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return (signal.SIGTERM,) if ignored else (signal.SIGTERM, signal.SIGINT)
