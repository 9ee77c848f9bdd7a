"""An HTTP proxy on 127.0.0.1 in front of an S3-protocol server, for tests: it records every
request (method, path, Range) and can fail a share of them the way real object stores
do (503 SlowDown, dropped connections, slow responses). Test support only."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultPlan", "ProxyLog", "RecordedRequest", "s3_proxy"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer",
        "upgrade"}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str  # /bucket/key (path-style), without the query
    query: str
    range: str | None
    status: int  # 0: the connection was dropped
    fault: str | None


@dataclass
class FaultPlan:
    """Which requests fail: each request matching ``applies`` fails with probability
    ``rate``, the kind drawn from ``kinds`` (``"503"``, ``"reset"``, ``"delay"``); besides,
    the first ``first`` requests matching ``first_applies`` fail for sure (alternately 503
    and reset), so a test can count on some faults where it needs them."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ("503", "reset", "delay")
    delay_s: float = 0.3
    seed: int = 0
    applies: Callable[[str, str], bool] = lambda method, path: True
    first: int = 0
    first_applies: Callable[[str, str], bool] = lambda method, path: False
    _forced: int = 0


@dataclass
class ProxyLog:
    """What the proxy saw; ``faults`` can be changed while it runs."""

    endpoint: str
    faults: FaultPlan
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=random.Random)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def draw(self, method: str, path: str) -> str | None:
        with self.lock:
            plan = self.faults
            if plan._forced < plan.first and plan.first_applies(method, path):
                plan._forced += 1
                return ("503", "reset")[plan._forced % 2]
            if plan.rate <= 0 or not plan.applies(method, path):
                return None
            if self._rng.random() >= plan.rate:
                return None
            return self._rng.choice(plan.kinds)

    def record(self, req: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(req)

    def matching(self, prefix: str, method: str = "GET") -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]


def _handler(upstream: tuple[str, int], log: ProxyLog) -> type[BaseHTTPRequestHandler]:
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _forward(self) -> None:
            parts = urlsplit(self.path)
            body = self._body()
            fault = log.draw(self.command, parts.path)
            rec = dict(method=self.command, path=parts.path, query=parts.query,
                       range=self.headers.get("Range"), fault=fault)
            if fault == "reset":
                log.record(RecordedRequest(status=0, **rec))
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                except OSError:
                    pass
                return
            if fault == "503":
                payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                           b"<Message>Please reduce your request rate.</Message></Error>")
                log.record(RecordedRequest(status=503, **rec))
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            if fault == "delay":
                time.sleep(log.faults.delay_s)
            conn = getattr(local, "conn", None)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            headers["Content-Length"] = str(len(body))
            for attempt in range(2):
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(*upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = local.conn = None
                    if attempt:
                        raise
            log.record(RecordedRequest(status=resp.status, **rec))
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            # a HEAD answer has no body but the length of the object it describes
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler


@contextmanager
def s3_proxy(upstream_endpoint: str, faults: FaultPlan | None = None) -> Iterator[ProxyLog]:
    """Run the proxy on a free loopback port in front of ``upstream_endpoint``."""
    target = urlsplit(upstream_endpoint)
    plan = faults or FaultPlan()
    log = ProxyLog("", plan, _rng=random.Random(plan.seed))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler((target.hostname, target.port), log))
    server.daemon_threads = True
    log.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield log
    finally:
        server.shutdown()
        server.server_close()
