"""A small HTTP/1.1 keep-alive client for the gateway's hop to the model server.

The gateway sends one JSON POST (or a status GET) per request to a single, known server over
loopback or a private network. A general-purpose client (aiohttp's) spends more CPU per request
than the model server's hop is worth, so this one does only that: a pool of persistent
connections, one request at a time on each (no pipelining), responses framed by Content-Length
or chunked encoding, and the errors the gateway maps to 503/504.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import urllib.parse

_HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024


class UpstreamUnreachable(ConnectionError):
    """The connection could not be made (refused, no route, connect timeout)."""


class UpstreamClosed(ConnectionError):
    """The server closed the connection before answering."""


class UpstreamProtocolError(ConnectionError):
    """The server's answer was not HTTP/1.x this client can read."""


class _Response:
    __slots__ = ("status", "body")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


class _Connection(asyncio.Protocol):
    """One persistent connection; `request` writes a request and resolves with its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.keep_alive = True
        self._status = 0
        self._body_start = -1
        self._length = -1  # -1: not known yet; -2: chunked
        self.received_any = False

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            try:
                response = self._parse()
            except UpstreamProtocolError as err:
                self.keep_alive = False
                self.waiter.set_exception(err)
                return
            if response is not None:
                self.waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(UpstreamClosed(f"the server closed the connection{f' ({exc})' if exc else ''}"))

    # --- use ---
    def send(self, request: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.buffer.clear()
        self.received_any = False
        self._status, self._body_start, self._length = 0, -1, -1
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> _Response | None:
        buffer = self.buffer
        if self._body_start < 0:
            end = buffer.find(_HEADER_END)
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise UpstreamProtocolError("response headers are too large")
                return None
            head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            parts = head[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise UpstreamProtocolError(f"not an HTTP/1.x status line: {head[0][:80]!r}")
            self._status = int(parts[1])
            self.keep_alive = parts[0] == "HTTP/1.1"
            length = -1
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    length = -2
                elif name == "connection":
                    token = value.strip().lower()
                    self.keep_alive = token == "keep-alive" or (self.keep_alive and token != "close")
            if length == -1:
                if self._status in (204, 304) or 100 <= self._status < 200:
                    length = 0
                else:
                    raise UpstreamProtocolError("the response has neither Content-Length nor chunked encoding")
            self._body_start, self._length = end + 4, length
        if self._length >= 0:
            stop = self._body_start + self._length
            if len(buffer) < stop:
                return None
            return _Response(self._status, bytes(buffer[self._body_start:stop]))
        return self._parse_chunked()

    def _parse_chunked(self) -> _Response | None:
        buffer, position, body = self.buffer, self._body_start, bytearray()
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise UpstreamProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            chunk_start = line_end + 2
            if size == 0:
                trailer_end = buffer.find(_HEADER_END, line_end)
                return _Response(self._status, bytes(body)) if trailer_end >= 0 or buffer.endswith(b"0\r\n\r\n") else None
            if len(buffer) < chunk_start + size + 2:
                return None
            body += buffer[chunk_start:chunk_start + size]
            position = chunk_start + size + 2


class HttpPool:
    """Persistent connections to one `http://host:port` base URL."""

    def __init__(self, base_url: str, *, max_idle: int = 64, connect_timeout_s: float = 1.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the model server's REST URL must be http://host:port, got {base_url!r}")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.host_header = parsed.netloc.encode("latin-1")
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self._idle: collections.deque[_Connection] = collections.deque()

    async def request(self, method: str, path: str, body: bytes | None, timeout_s: float) -> tuple[int, bytes]:
        """Sends one request and returns (status, body). A pooled connection the server had closed
        is replaced once, transparently; other failures raise UpstreamUnreachable, UpstreamClosed,
        UpstreamProtocolError or asyncio.TimeoutError."""
        head = (f"{method} {path} HTTP/1.1\r\nHost: ").encode("latin-1") + self.host_header
        if body is not None:
            head += b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + _HEADER_END
            message = head + body
        else:
            message = head + _HEADER_END
        for attempt in (1, 2):
            connection, reused = await self._acquire()
            try:
                response = await asyncio.wait_for(connection.send(message), timeout_s)
            except UpstreamClosed:
                connection.close()
                if reused and attempt == 1 and not connection.received_any:
                    continue  # a keep-alive connection the server had closed meanwhile: once more on a fresh one
                raise
            except BaseException:
                connection.close()  # a timed-out or cancelled request leaves the connection in an unknown state
                raise
            self._release(connection)
            return response.status, response.body
        raise AssertionError("unreachable")

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection, True
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(_Connection, self.host, self.port),
                                                   self.connect_timeout_s)
        except asyncio.TimeoutError:
            raise UpstreamUnreachable(f"no connection within {self.connect_timeout_s}s") from None
        except OSError as err:
            raise UpstreamUnreachable(f"{type(err).__name__}: {err}") from None
        return connection, False

    def _release(self, connection: _Connection) -> None:
        if connection.closed or not connection.keep_alive or len(self._idle) >= self.max_idle:
            connection.close()
        else:
            self._idle.append(connection)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"HttpPool({self.host}:{self.port}, idle={len(self._idle)})"


__all__ = ["HttpPool", "UpstreamClosed", "UpstreamProtocolError", "UpstreamUnreachable"]
