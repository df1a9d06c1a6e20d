"""The gateway's HTTP/1.1 keep-alive pool against real sockets on loopback, with servers that
answer the ways HTTP servers do: Content-Length, chunked, `Connection: close`, too slowly, or not
at all."""

from __future__ import annotations

import asyncio
import socket

import pytest

from serving.gateway.http_pool import HttpPool, UpstreamClosed, UpstreamProtocolError, UpstreamUnreachable


async def _serve(answer, *, close_after: int | None = None):
    """A raw HTTP server: `answer(request_bytes) -> response bytes` (None: say nothing)."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                response = answer(head + body)
                if response is None:
                    await asyncio.sleep(3600)
                writer.write(response)
                await writer.drain()
                served += 1
                if close_after is not None and served >= close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def run(coroutine):
    return asyncio.run(coroutine)


def test_keep_alive_reuses_one_connection_and_sends_the_body():
    async def scenario():
        seen = []
        server, url, connections = await _serve(lambda request: seen.append(request) or _ok(b'{"n": %d}' % len(seen)))
        pool = HttpPool(url)
        answers = [await pool.request("POST", "/v1/models/taxi:predict", b'{"instances": []}', 5) for _ in range(3)]
        assert (await pool.request("GET", "/v1/models/taxi", None, 5))[0] == 200
        await pool.close()
        server.close()
        return answers, seen, connections

    answers, seen, connections = run(scenario())
    assert answers == [(200, b'{"n": 1}'), (200, b'{"n": 2}'), (200, b'{"n": 3}')]
    assert seen[0].startswith(b"POST /v1/models/taxi:predict HTTP/1.1\r\nHost: 127.0.0.1:")
    assert seen[0].endswith(b'Content-Length: 17\r\n\r\n{"instances": []}')
    assert seen[3].startswith(b"GET /v1/models/taxi HTTP/1.1\r\n")
    assert len(connections) == 1


def test_chunked_answers_and_error_statuses_are_read_whole():
    chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"erro\r\n9\r\nr\": \"no\"}\r\n0\r\n\r\n"

    async def scenario():
        server, url, _ = await _serve(lambda request: chunked)
        pool = HttpPool(url)
        answer = await pool.request("GET", "/v1/models/nope", None, 5)
        server.close()
        return answer

    assert run(scenario()) == (404, b'{"error": "no"}')


def test_a_connection_the_server_closes_is_replaced_transparently():
    async def scenario():
        server, url, connections = await _serve(lambda request: _ok(b"{}"), close_after=1)
        pool = HttpPool(url)
        first = await pool.request("GET", "/a", None, 5)
        await asyncio.sleep(0.1)  # the server has closed the pooled connection by now
        second = await pool.request("GET", "/b", None, 5)
        server.close()
        return first, second, connections

    first, second, connections = run(scenario())
    assert first == second == (200, b"{}")
    assert len(connections) == 2


def test_connection_close_is_honoured():
    async def scenario():
        server, url, connections = await _serve(lambda request: _ok(b"{}", b"Connection: close\r\n"))
        pool = HttpPool(url)
        for _ in range(2):
            await pool.request("GET", "/", None, 5)
        server.close()
        return connections

    assert len(run(scenario())) == 2


def test_failures_are_typed_timeout_unreachable_closed_and_garbage():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]

    async def scenario():
        silent, silent_url, _ = await _serve(lambda request: None)
        with pytest.raises(asyncio.TimeoutError):
            await HttpPool(silent_url).request("GET", "/", None, 0.3)
        with pytest.raises(UpstreamUnreachable):
            await HttpPool(f"http://127.0.0.1:{free_port}").request("GET", "/", None, 1)
        hangup, hangup_url, _ = await _serve(lambda request: b"", close_after=1)
        with pytest.raises(UpstreamClosed):
            await HttpPool(hangup_url).request("GET", "/", None, 1)
        garbage, garbage_url, _ = await _serve(lambda request: b"SSH-2.0-OpenSSH\r\n\r\n")
        with pytest.raises(UpstreamProtocolError, match="not an HTTP/1.x status line"):
            await HttpPool(garbage_url).request("GET", "/", None, 1)
        for server in (silent, hangup, garbage):
            server.close()

    run(scenario())


def test_only_http_urls_are_accepted():
    with pytest.raises(ValueError, match="http://host:port"):
        HttpPool("https://model-server:8501")
