"""``sim.wire``, the fleet's small HTTP/1.1 client, against raw asyncio servers that answer
exactly the bytes each test needs (chunked bodies, closed keep-alive connections, oversized
or malformed answers, server-sent events); and against uvicorn in the fleet tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from suitkit.sim.wire import Held, Pool, WireError, parse_server_url

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def test_content_length_chunked_and_keep_alive() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            if b"/chunked" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def test() -> None:
        server, url = await _serve(handler)
        pool = Pool(url, 2)
        try:
            answer = await pool.request("POST", "/a", body=b"{}",
                                        headers={"Content-Type": "application/json"})
            assert (answer.status, answer.body) == (201, b"ok")
            answer = await pool.request("GET", "/chunked")
            assert (answer.status, answer.body) == (200, b"hello world")
            assert connections == 1  # kept alive
        finally:
            pool.close()
            server.close()

    _run(test)


def test_a_connection_the_server_closed_while_idle_is_replaced_once() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        await writer.drain()
        writer.close()  # says keep-alive, closes anyway (as after uvicorn's keep-alive timeout)

    async def test() -> None:
        server, url = await _serve(handler)
        pool = Pool(url, 1)
        try:
            for _ in range(3):
                assert (await pool.request("GET", "/")).body == b"x"
                await asyncio.sleep(0.05)
            assert served == 3
        finally:
            pool.close()
            server.close()

    _run(test)


@pytest.mark.parametrize(("answer", "said"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", "over 1000"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n", "over 1000"),
    (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\n", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
    # a negative size (int(.., 16) takes a sign) raised ValueError from readexactly
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", "malformed chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n", "malformed chunk size"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", "100 headers"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "connection was lost"),
    (b"", "connection was lost"),
])
def test_a_bad_or_oversized_answer_is_one_line(answer: bytes, said: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def test() -> None:
        server, url = await _serve(handler)
        pool = Pool(url, 1)
        try:
            with pytest.raises(WireError, match=said) as caught:
                await pool.request("GET", "/x", max_bytes=1000)
            assert "\n" not in str(caught.value)
        finally:
            pool.close()
            server.close()

    _run(test)


def test_no_answer_in_time_is_a_wire_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def test() -> None:
        server, url = await _serve(handler)
        pool = Pool(url, 1)
        try:
            with pytest.raises(WireError, match=r"no answer within 0\.3 s"):
                await pool.request("GET", "/slow", timeout=0.3)
        finally:
            pool.close()
            server.close()

    _run(test)


def test_server_sent_events_are_read_event_by_event() -> None:
    stream = (b"event: notice\nid: 1\ndata: {\"serial\": 1}\n\n: heartbeat\n\n"
              b"event: notice\r\nid: 2\r\ndata: {\"serial\":\r\ndata:  2}\r\n\r\n")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_request(reader)
        assert b"Accept: text/event-stream" in head
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(stream), 7):  # events split across chunks anywhere
            piece = stream[i:i + 7]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def test() -> None:
        server, url = await _serve(handler)
        held = Held(Pool(url, 1))
        try:
            got = [item async for item in held.events("/n", idle_timeout=5)]
            assert got == [(200, ""), (200, '{"serial": 1}'), (200, '{"serial":\n2}')]
        finally:
            held.close()
            server.close()

    _run(test)


def test_server_urls_are_checked() -> None:
    assert parse_server_url("http://127.0.0.1:8080/base/") == ("http", "127.0.0.1", 8080,
                                                               "/base")
    assert parse_server_url("https://example.com")[2] == 443
    for bad in ("ftp://x", "127.0.0.1:80", "http://", "http://h:99999"):
        with pytest.raises(ValueError, match=r"expected an http|port"):
            parse_server_url(bad)


def test_an_endless_event_is_cut_off() -> None:
    """A stream that never ends its event (data lines, no blank line) is refused at the
    bound, not held in memory."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        line = b"data: " + b"x" * 1000 + b"\n"
        for _ in range(200):
            writer.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            await writer.drain()

    async def test() -> None:
        server, url = await _serve(handler)
        held = Held(Pool(url, 1))
        try:
            with pytest.raises(WireError, match="an event is over 65536 bytes"):
                async for _ in held.events("/n", idle_timeout=5):
                    pass
        finally:
            held.close()
            server.close()

    _run(test)


def test_a_held_connection_the_server_closes_as_the_next_long_poll_comes_is_replaced() -> None:
    """The server's keep-alive timeout fires as the device's next long-poll arrives (it reads
    the request and closes without an answer): the long-poll is asked again on a new
    connection, not counted as a transport error."""
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await _read_request(reader)
        answered += 1
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        await _read_request(reader)  # the next one on this connection: closed unanswered

    async def test() -> None:
        server, url = await _serve(handler)
        held = Held(Pool(url, 1))
        try:
            for _ in range(3):
                assert (await held.request("GET", "/n?wait=1")).status == 204
            assert answered == 3
        finally:
            held.close()
            server.close()

    _run(test)


def test_a_deeply_nested_json_answer_is_no_work_for_a_light_device() -> None:
    """A check-in answer or notice of 20,000 nested brackets raised RecursionError in the
    device's coroutine (the swarm reads every answer with ``_json``)."""
    from suitkit.sim.swarm import _json

    assert _json(b"[" * 20_000 + b"]" * 20_000) == {}
    assert _json(b'{"release": "ab"}') == {"release": "ab"}
