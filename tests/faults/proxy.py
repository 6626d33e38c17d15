"""A flaky object store: an HTTP proxy on 127.0.0.1 that fails like S3 and GCS under load.

It stands between s3fs and the moto server and, for each request, draws one of:

- an error answer (`error_rate`): `503 SlowDown` or `500 InternalError` with S3's XML body; the
  request never reaches the store;
- a reset (`reset_rate`): the connection is reset in the middle of a body. For a request that has
  a body (an upload), half of these reset it once half of the upload has arrived, and the store
  never sees it; the others, and every reset of a request without a body, forward the request (the
  store applies it) and reset the connection halfway through the answer's body (halfway through its
  headers when it has none);
- nothing: the request is forwarded and answered as the store answered it.

`stall(seconds, when)` holds the answer to the next request that `when` accepts for `seconds`
(the store has applied it; the client waits, or gives up on its own timeout). `fail_next(fault,
when)` gives one chosen request one chosen fault. `storm(failures)` answers `500 InternalError`
to the first `failures` tries of every request (the same method and path), whatever the rates: an
outage that a client outlasts only with enough attempts. `counts`
says what was done, so a test can check that the faults really happened.
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

ERRORS = {
    503: ("Service Unavailable", "SlowDown", "Please reduce your request rate."),
    500: ("Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
}
"""The error answers a busy store gives: status -> (reason, S3 error code, message)."""
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect"}
"""Headers that describe one connection, not the request: rewritten by the proxy."""


@dataclass(frozen=True)
class Request:
    """What the proxy knows of a request when it decides its fault."""

    method: str
    target: str
    """The path and query, e.g. `/bucket/out/part-00000.parquet?x-id=PutObject`."""
    body_size: int
    """As the request's headers announce it."""


class _Reset(Exception):
    """The client's connection is to be reset now."""


class FaultyStore:
    """The proxy; `url` is its endpoint (give it to clients as `AWS_ENDPOINT_URL`)."""

    def __init__(
        self, upstream: str, *, error_rate: float = 0.10, reset_rate: float = 0.05, seed: int = 0
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self.counts: Counter[str] = Counter()
        """`requests`, `503`, `500`, `reset_upload`, `reset_answer`, `stalled`."""
        self.log: list[tuple[Request, str]] = []
        """Each request and the fault it got (`""` for none), in the order they arrived."""
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stall: tuple[float, Callable[[Request], bool]] | None = None
        self._storm = 0
        self._planned: list[tuple[str, Callable[[Request], bool]]] = []
        self._tries: Counter[tuple[str, str]] = Counter()
        self._closing = threading.Event()
        store = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                store._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting connections and release any stalled answer."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def stall(self, seconds: float, when: Callable[[Request], bool] = lambda request: True) -> None:
        """Hold the answer to the next request that `when` accepts for `seconds`, once."""
        with self._lock:
            self._stall = (seconds, when)

    def fail_next(self, fault: str, when: Callable[[Request], bool]) -> None:
        """Give the next request that `when` accepts the fault `fault` (`503`, `500`, `reset_upload`,
        `reset_answer`), once, whatever the rates."""
        with self._lock:
            self._planned.append((fault, when))

    def storm(self, failures: int) -> None:
        """Answer `500 InternalError` to the first `failures` tries of each request from now on."""
        with self._lock:
            self._storm = failures
            self._tries.clear()

    @property
    def stall_pending(self) -> bool:
        """Whether a stall asked for has not happened yet."""
        return self._stall is not None

    def faults(self) -> int:
        """How many requests got a fault (error, reset or stall)."""
        return sum(n for name, n in self.counts.items() if name != "requests")

    def _decide(self, request: Request) -> tuple[str, float]:
        """The fault of one request, and how long to stall its answer."""
        with self._lock:
            self.counts["requests"] += 1
            stall = 0.0
            if self._stall is not None and self._stall[1](request):
                stall, self._stall = self._stall[0], None
                self.counts["stalled"] += 1
            draw = self._random.random()
            self._tries[request.method, request.target] += 1
            planned = next((p for p in self._planned if p[1](request)), None)
            if planned is not None:
                self._planned.remove(planned)
            if stall:
                fault = "stalled"
            elif planned is not None:
                fault = planned[0]
            elif self._tries[request.method, request.target] <= self._storm:
                fault = "500"
            elif draw < self.error_rate:
                fault = str(self._random.choice(sorted(ERRORS)))
            elif draw < self.error_rate + self.reset_rate:
                upload = request.body_size > 1 and self._random.random() < 0.5
                fault = "reset_upload" if upload else "reset_answer"
            else:
                fault = ""
            if fault and fault != "stalled":
                self.counts[fault] += 1
            self.log.append((request, fault))
            return fault, stall

    def _serve(self, client: socket.socket) -> None:
        """Answer the requests of one client connection (HTTP/1.1 keep-alive) until it closes."""
        reader = client.makefile("rb")
        try:
            while not self._closing.is_set():
                head = _read_head(reader)
                if head is None:
                    return
                method, target, headers = _parse_head(head)
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                fault, stall = self._decide(Request(method, target, _body_size(headers)))
                if fault == "reset_upload":  # the store never sees it
                    reader.read(max(_body_size(headers), 2) // 2)
                    raise _Reset
                body = _read_body(reader, headers)
                if fault in ("503", "500"):
                    client.sendall(_error_answer(int(fault), method))
                    continue
                answer = self._forward(method, target, headers, body)
                if fault == "reset_answer":
                    body_start = answer.index(b"\r\n\r\n") + 4
                    cut = (
                        body_start + (len(answer) - body_start) // 2
                        if len(answer) > body_start + 1
                        else body_start // 2
                    )
                    client.sendall(answer[:cut])
                    raise _Reset
                if stall and self._closing.wait(stall):
                    return
                client.sendall(answer)
                if headers.get("connection", "").lower() == "close":
                    return
        except _Reset:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            return  # the client went away (a stalled answer it stopped waiting for)
        finally:
            reader.close()
            client.close()

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        """The store's answer to the request, framed again with a Content-Length."""
        with socket.create_connection(self.upstream, timeout=60) as upstream:
            lines = [f"{method} {target} HTTP/1.1"]
            lines += [f"{name}: {value}" for name, value in headers.items() if name not in HOP_HEADERS]
            lines += [f"Content-Length: {len(body)}", "Connection: close"]
            upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            response = http.client.HTTPResponse(upstream, method=method)
            response.begin()
            payload = response.read()
            out = [f"HTTP/1.1 {response.status} {response.reason}"]
            out += [f"{k}: {v}" for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            if method == "HEAD":
                out.append(f"Content-Length: {response.getheader('Content-Length', '0')}")
            else:
                out.append(f"Content-Length: {len(payload)}")
            return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload


def _read_head(reader) -> bytes | None:
    """The request line and headers, or None when the client closed the connection."""
    lines = []
    while True:
        line = reader.readline(65537)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return b"".join(lines)
            continue
        lines.append(line)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers (lower-cased names) of a request head."""
    first, *rest = head.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    headers = {}
    for line in rest:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _body_size(headers: dict[str, str]) -> int:
    """The size of the request's body as its headers announce it (a chunked body counts as 2 bytes)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return 2
    return int(headers.get("content-length", "0") or 0)


def _read_body(reader, headers: dict[str, str]) -> bytes:
    """The request's body, without its HTTP framing (Content-Length or chunked)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int(reader.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(reader.read(size))
            reader.readline()
    length = int(headers.get("content-length", "0") or 0)
    return reader.read(length) if length else b""


def _error_answer(status: int, method: str) -> bytes:
    """S3's answer for an error: its XML body names the code botocore and s3fs look for."""
    reason, code, message = ERRORS[status]
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        "<RequestId>FAULTY0STORE</RequestId><HostId>faulty-store</HostId></Error>"
    ).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        "x-amz-request-id: FAULTY0STORE",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if method == "HEAD" else body)
