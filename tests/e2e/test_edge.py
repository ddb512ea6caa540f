"""The connection's edge of a real gateway process (uvicorn, httptools): oversized and slow requests, too many
connections and bytes that are not HTTP are refused in the OpenAI envelope with their status, the connection
is closed, and the gateway goes on serving. Raw sockets, since no HTTP client sends such requests."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import localstack
import pytest

from tests.support.gateway import GatewayProcess

LIMITS = {
    "max_url_bytes": 1024,
    "max_header_bytes": 4096,
    "max_headers": 20,
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "max_connections": 6,
}
PATIENCE_S = 20.0  # how long a test waits for the gateway to act: far above the 1 s deadlines, never asserted


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("edge")
    config: dict[str, Any] = {
        "server": {"log_level": "warning", **LIMITS},
        "limits": {
            "max_messages": 50,
            "max_message_chars": 1000,
            "max_input_chars": 5000,
            "max_in_work": 1,
            "max_waiting": 2,
            "max_wait_s": 30,
        },
        "intents": {"greeting": {"examples": ["hello there", "good morning"], "threshold": 0.5}},
        "policies": {
            "desk": {"rules": [{"name": "greet", "when": {"intent": "greeting"}, "target": "base"}], "default": "base"}
        },
        # nothing listens there: these tests never reach an upstream
        "vllm": {"url": f"http://127.0.0.1:{localstack.free_port()}", "model": "edge-model"},
    }
    process = GatewayProcess(config, workdir, localstack.free_port()).start()
    yield process
    process.stop()


def _connect(gateway: GatewayProcess) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", gateway.port), timeout=PATIENCE_S)
    return conn


def _answer(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the gateway closes the connection: the status, headers and body it sent."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _refused(conn: socket.socket, status: int, code: str) -> dict[str, Any]:
    got, headers, body = _answer(conn)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return dict(error)


def _still_serving(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/v1/models", timeout=PATIENCE_S).status_code == 200


def test_a_huge_header_is_431_before_it_is_whole(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    conn.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 64 * 1024)  # never finished
    error = _refused(conn, 431, "headers_too_large")
    assert "server.max_header_bytes" in error["message"]
    _still_serving(edge)


def test_too_many_header_lines_is_431(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    lines = b"".join(b"x-h%d: v\r\n" % i for i in range(40))
    conn.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + lines + b"\r\n")
    _refused(conn, 431, "headers_too_large")


def test_a_long_url_is_414(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    conn.sendall(b"GET /v1/models?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    error = _refused(conn, 414, "url_too_long")
    assert "server.max_url_bytes" in error["message"]


def test_headers_sent_slowly_get_408(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    conn.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")  # and nothing more
    error = _refused(conn, 408, "request_timeout")
    assert "server.header_timeout_s" in error["message"]


def test_a_body_that_never_finishes_gets_408(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    conn.sendall(head + b"content-length: 1000\r\n\r\n" + b'{"model": "edge-model"')
    error = _refused(conn, 408, "request_timeout")
    assert "server.body_timeout_s" in error["message"]


def test_a_chunked_body_that_never_ends_gets_408(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    _refused(conn, 408, "request_timeout")


def test_a_connection_that_sends_nothing_is_closed(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    assert conn.recv(1) == b""  # closed by the gateway: recv would otherwise wait PATIENCE_S and raise


def test_bytes_that_are_not_http_get_the_envelope(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    conn.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
    error = _refused(conn, 400, "invalid_http_request")
    assert "not valid HTTP/1.1" in error["message"]


def test_an_unknown_method_is_501(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    conn.sendall(b"BREW /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
    _refused(conn, 501, "method_not_implemented")


def test_a_content_length_shorter_than_the_body_gets_the_envelope(edge: GatewayProcess) -> None:
    """The ``curl -H 'Content-Length: 5' -d '{"model":"x"}'`` case: what follows the five bytes cannot be
    HTTP, so the connection is refused with one envelope and closed."""
    conn = _connect(edge)
    body = b'{"model":"x"}'
    conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n" + body)
    _refused(conn, 400, "invalid_http_request")


def test_one_connection_too_many_gets_503_with_retry_after(edge: GatewayProcess) -> None:
    # The gateway's own connections count too; open idle ones until it refuses (it must, within the cap).
    held = [_connect(edge) for _ in range(int(LIMITS["max_connections"]))]
    try:
        extra = _connect(edge)
        extra.settimeout(PATIENCE_S)
        status, headers, body = _answer(extra)
        assert status == 503, body
        assert headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
    finally:
        for conn in held:
            conn.close()
    _still_serving(edge)


def test_head_answers_like_get_without_a_body(edge: GatewayProcess) -> None:
    for path in ("/v1/models", "/health", "/metrics"):
        head, get = httpx.head(edge.url + path), httpx.get(edge.url + path)
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]


def test_refusals_are_counted_by_code(edge: GatewayProcess) -> None:
    conn = _connect(edge)
    conn.sendall(b"GET /v1/models?q=" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")
    _refused(conn, 414, "url_too_long")
    metrics = httpx.get(edge.url + "/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith('turnout_errors_total{type="url_too_long"}')]
    assert counted
    assert float(counted[0].split()[-1]) >= 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route/explain"])
def test_input_caps_hold_on_completions_and_explain(edge: GatewayProcess, path: str) -> None:
    many = {"model": "edge-model", "messages": [{"role": "user", "content": "hi"}] * 50_000}
    long = {"model": "edge-model", "messages": [{"role": "user", "content": "a" * 4_000_000}]}
    for body, code in ((many, "too_many_messages"), (long, "message_too_long")):
        response = httpx.post(edge.url + path, json=body, timeout=PATIENCE_S)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == code


def test_past_its_work_slots_and_queue_the_gateway_refuses_at_once(edge: GatewayProcess) -> None:
    """One request in work and two waiting (each routing embeds a new text), four clients at a time: what
    finds the queue full is refused with 503 and retry-after instead of queueing, and every answer is one
    or the other."""

    async def burst() -> list[httpx.Response]:
        pool = httpx.Limits(max_connections=4)  # within server.max_connections (6)
        async with httpx.AsyncClient(timeout=PATIENCE_S, limits=pool) as client:
            texts = [f"hello number {i}" for i in range(40)]
            bodies = [{"model": "desk", "messages": [{"role": "user", "content": t}]} for t in texts]
            return await asyncio.gather(*(client.post(edge.url + "/v1/route/explain", json=b) for b in bodies))

    answers = asyncio.run(burst())
    statuses = sorted({r.status_code for r in answers})
    assert statuses == [200, 503], [r.text for r in answers if r.status_code not in (200, 503)]
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
    assert httpx.post(edge.url + "/v1/route/explain", json=bodies_one()).status_code == 200  # and then serves


def bodies_one() -> dict[str, Any]:
    return {"model": "desk", "messages": [{"role": "user", "content": "good morning to you"}]}


class _Stalling(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that lists its model and is healthy, but never answers a completion."""

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "silent-model", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.stalled.wait()  # type: ignore[attr-defined]  # until the test ends

    def log_message(self, *args: Any) -> None:
        pass


def test_no_first_byte_within_the_deadline_is_504(tmp_path: Path) -> None:
    """An upstream that takes the request and never answers: the request's deadline for its first byte
    (limits.first_byte_timeout_s) answers 504 long before the upstream's own read timeout would."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.stalled = threading.Event()  # type: ignore[attr-defined]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config: dict[str, Any] = {
        "server": {"log_level": "warning"},
        "vllm": {"url": f"http://127.0.0.1:{server.server_address[1]}", "model": "silent-model"},
        "limits": {"first_byte_timeout_s": 1.0},
    }
    gateway = GatewayProcess(config, tmp_path, localstack.free_port()).start()
    try:
        body = {"model": "silent-model", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=PATIENCE_S)
    finally:
        gateway.stop()
        server.stalled.set()  # type: ignore[attr-defined]
        server.shutdown()
    assert answer.status_code == 504, answer.text
    error = answer.json()["error"]
    assert error["code"] == "first_byte_deadline_exceeded"
    assert "limits.first_byte_timeout_s" in error["message"]


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_header_bombs_do_not_grow_the_gateway(edge: GatewayProcess) -> None:
    """Four connections each trying to send 12 MB of one header (what grew an unbounded gateway by ~200 MB):
    each is refused once it passes the cap (what it still sends is dropped, then it is closed), and the
    process stays within a few MB of where it was."""
    assert edge.process is not None
    before = _rss_kb(edge.process.pid)
    bombs = [_connect(edge) for _ in range(4)]
    for conn in bombs:
        conn.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-bomb: ")
    for conn in bombs:
        try:
            for _ in range(12 * 16):  # 12 MB in 64 KB writes, until the gateway stops reading
                conn.sendall(b"a" * 65536)
        except OSError:
            pass  # refused and closed: the rest is not read
    grown_mb = (_rss_kb(edge.process.pid) - before) / 1024
    for conn in bombs:
        conn.close()
    assert grown_mb < 16, f"the gateway grew by {grown_mb:.0f} MB"
    _still_serving(edge)


def test_hundreds_of_slow_connections_do_not_stop_a_normal_client(tmp_path: Path) -> None:
    """500 connections sending their headers slowly (well within the default connection cap), and a normal
    client is served at once beside them."""
    config: dict[str, Any] = {
        "server": {"log_level": "warning", "header_timeout_s": 60},
        "vllm": {"url": f"http://127.0.0.1:{localstack.free_port()}", "model": "edge-model"},
    }
    gateway = GatewayProcess(config, tmp_path, localstack.free_port()).start()
    slow: list[socket.socket] = []
    try:
        for _ in range(500):
            conn = _connect(gateway)
            conn.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")  # and then nothing
            slow.append(conn)
        answer = httpx.get(gateway.url + "/v1/models", timeout=PATIENCE_S)
        assert answer.status_code == 200
        assert answer.json()["data"][0]["id"] == "edge-model"
    finally:
        for conn in slow:
            conn.close()
        gateway.stop()
