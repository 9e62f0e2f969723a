"""CniHttpServer: socket file safety (mode, stale and live sockets) and the
HTTP surface, spoken to with a plain HTTP client over the unix socket."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nicwarden.agent.errors import AlreadyExists
from nicwarden.cni import http_endpoint
from nicwarden.cni.http_endpoint import CniHttpServer
from tests.support.threads import assert_sleeps_when_idle


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


def request(
    path: Path,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = UnixHTTPConnection(path)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def cni_body(env: dict[str, str] | None = None, stdin: str = "{}") -> bytes:
    return json.dumps({"env": env or {"CNI_COMMAND": "ADD"}, "stdin": stdin}).encode()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], str]] = []

    def __call__(self, env: dict[str, str], stdin: str) -> tuple[int, bytes]:
        self.calls.append((env, stdin))
        return (7, b'{"code": 7}')


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "state" / "run" / "cni.sock"


@pytest.fixture
def served(sock: Path) -> Iterator[Recorder]:
    recorder = Recorder()
    with CniHttpServer(sock, recorder):
        yield recorder


def test_socket_is_0600_in_a_new_0700_directory(sock: Path, served: Recorder) -> None:
    st = os.lstat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    # No temp names are left next to it.
    assert sorted(p.name for p in sock.parent.iterdir()) == ["cni.sock"]


def test_socket_mode_does_not_depend_on_umask(sock: Path) -> None:
    old = os.umask(0)
    try:
        with CniHttpServer(sock, Recorder()):
            assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    finally:
        os.umask(old)


def test_existing_parent_directory_is_left_as_is(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o755)
    parent.chmod(0o755)
    with CniHttpServer(parent / "cni.sock", Recorder()):
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o755


def test_post_runs_the_handler_and_returns_its_answer(sock: Path, served: Recorder) -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "abc"}
    status, headers, body = request(sock, "POST", "/v1/cni", cni_body(env, '{"a": "é"}'))
    assert status == 200
    assert headers["x-cni-exit-code"] == "7"
    assert body == b'{"code": 7}'
    assert served.calls == [(env, '{"a": "é"}')]


def test_ready_endpoint_follows_the_callable(sock: Path) -> None:
    ready = threading.Event()
    recorder = Recorder()
    with CniHttpServer(sock, recorder, ready=ready.is_set):
        assert request(sock, "GET", "/v1/ready")[0] == 503
        # Not ready: the CNI request is refused without running, so it can be retried.
        assert request(sock, "POST", "/v1/cni", cni_body())[0] == 503
        assert recorder.calls == []
        ready.set()
        assert request(sock, "GET", "/v1/ready")[0] == 200
        assert request(sock, "POST", "/v1/cni", cni_body())[0] == 200
        assert len(recorder.calls) == 1


def test_failing_readiness_check_reads_as_not_ready(sock: Path) -> None:
    def broken() -> bool:
        raise OSError("store unreadable")

    with CniHttpServer(sock, Recorder(), ready=broken):
        assert request(sock, "GET", "/v1/ready")[0] == 503


def test_oversized_request_is_413_and_not_run(sock: Path) -> None:
    recorder = Recorder()
    with CniHttpServer(sock, recorder, max_request_bytes=1024):
        small = cni_body(stdin="x" * 900)
        assert request(sock, "POST", "/v1/cni", small)[0] == 200
        big = cni_body(stdin="x" * 2000)
        assert request(sock, "POST", "/v1/cni", big)[0] == 413
    assert len(recorder.calls) == 1


def _send_head(sock_path: Path, length: int) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(sock_path))
    client.sendall(f"POST /v1/cni HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    return client


def _read_to_eof(client: socket.socket) -> bytes:
    answer = b""
    while chunk := client.recv(4096):
        answer += chunk
    return answer


def test_refused_client_may_finish_sending_its_body(sock: Path) -> None:
    # The answer arrives before the body is sent: the shape of the race in
    # which a client still writing used to meet EPIPE and lose the 413.
    recorder = Recorder()
    with CniHttpServer(sock, recorder, max_request_bytes=1024):
        client = _send_head(sock, 200_000)
        try:
            answer = _read_to_eof(client)  # the server half-closed after answering
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert b'"code": 7' in answer
            client.sendall(b"x" * 200_000)  # still read, so no EPIPE
        finally:
            client.close()
    assert recorder.calls == []


def test_lingering_after_a_refusal_is_bounded(sock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_endpoint, "_LINGER_SECONDS", 0.2)
    with CniHttpServer(sock, Recorder(), max_request_bytes=1024):
        client = _send_head(sock, 1 << 30)  # claims a GiB, then sends nothing
        try:
            assert _read_to_eof(client).startswith(b"HTTP/1.1 413 ")
            # Once the linger runs out the server closes: a write then fails.
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                for _ in range(1000):
                    client.sendall(b"x" * 4096)
                    time.sleep(0.01)
        finally:
            client.close()


def test_default_limit_is_one_mib(sock: Path, served: Recorder) -> None:
    # Only the header is sent: the limit is enforced before reading the body.
    status, _, _ = request(
        sock,
        "POST",
        "/v1/cni",
        headers={"Content-Length": str((1 << 20) + 1), "Connection": "close"},
    )
    assert status == 413
    assert served.calls == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[]", 400),
        (json.dumps({"env": {"CNI_COMMAND": 1}, "stdin": "{}"}).encode(), 400),
        (json.dumps({"env": {}, "stdin": None}).encode(), 400),
        (json.dumps({"stdin": "{}"}).encode(), 400),
    ],
)
def test_malformed_bodies_are_400(sock: Path, served: Recorder, body: bytes, status: int) -> None:
    assert request(sock, "POST", "/v1/cni", body)[0] == status
    assert served.calls == []


def test_unknown_paths_are_404(sock: Path, served: Recorder) -> None:
    assert request(sock, "POST", "/v2/cni", cni_body())[0] == 404
    assert request(sock, "GET", "/v1/cni")[0] == 404


def test_missing_content_length_is_411(sock: Path, served: Recorder) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"POST /v1/cni HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 411")


def test_handler_exception_is_500(sock: Path) -> None:
    def broken(env: dict[str, str], stdin: str) -> tuple[int, bytes]:
        raise ValueError("bug")

    with CniHttpServer(sock, broken):
        status, _, body = request(sock, "POST", "/v1/cni", cni_body())
    assert status == 500
    assert b"Traceback" not in body


def test_requests_are_served_concurrently(sock: Path) -> None:
    # Two requests meet at a barrier: serialised handling would time out.
    barrier = threading.Barrier(2, timeout=5)

    def meet(env: dict[str, str], stdin: str) -> tuple[int, bytes]:
        barrier.wait()
        return (0, stdin.encode())

    results: list[int] = []

    def call(n: int) -> None:
        status, _, body = request(sock, "POST", "/v1/cni", cni_body(stdin=str(n)))
        assert body == str(n).encode()
        results.append(status)

    with CniHttpServer(sock, meet):
        threads = [threading.Thread(target=call, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [200, 200]


def test_stale_socket_is_replaced(sock: Path) -> None:
    sock.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()  # what a killed agent leaves: the file, with nobody listening
    stale_inode = os.lstat(sock).st_ino
    recorder = Recorder()
    with CniHttpServer(sock, recorder):
        assert os.lstat(sock).st_ino != stale_inode
        assert request(sock, "POST", "/v1/cni", cni_body())[0] == 200
    assert len(recorder.calls) == 1


def test_live_server_is_not_replaced(sock: Path, served: Recorder) -> None:
    inode = os.lstat(sock).st_ino
    second = CniHttpServer(sock, Recorder())
    with pytest.raises(AlreadyExists, match=str(sock)):
        second.start()
    assert os.lstat(sock).st_ino == inode
    assert request(sock, "POST", "/v1/cni", cni_body())[0] == 200
    assert len(served.calls) == 1


def test_non_socket_file_is_not_replaced(sock: Path) -> None:
    sock.parent.mkdir(parents=True)
    sock.write_text("precious")
    with pytest.raises(AlreadyExists, match="not a socket"):
        CniHttpServer(sock, Recorder()).start()
    assert sock.read_text() == "precious"


def test_stop_removes_the_socket_but_not_a_successors(sock: Path) -> None:
    first = CniHttpServer(sock, Recorder())
    first.start()
    first.stop()
    assert not sock.exists()

    first.start()
    # A successor took over the path (the first's file was removed under it).
    sock.unlink()
    successor = CniHttpServer(sock, Recorder())
    successor.start()
    try:
        first.stop()
        assert sock.exists()
        assert request(sock, "GET", "/v1/ready")[0] == 200
    finally:
        successor.stop()
    assert not sock.exists()


def test_idle_accept_loop_sleeps_and_stop_wakes_it(sock: Path) -> None:
    recorder = Recorder()
    server = CniHttpServer(sock, recorder)
    server.start()
    thread = server._thread
    assert_sleeps_when_idle(thread, "the accept loop")
    assert request(sock, "POST", "/v1/cni", cni_body())[0] == 200
    server.stop()
    assert not thread.is_alive()
    assert not sock.exists()
    server.stop()  # a second stop is harmless
