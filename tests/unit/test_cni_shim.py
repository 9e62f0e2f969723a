"""The CNI shim binary, run as a runtime runs it (env + stdin, a fresh process),
against a real CniHttpServer on a temp socket or, for replies the agent never
sends, a raw socket peer. This tests the transport, so the agent side is a
recording handler."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nicwarden.cni.http_endpoint import CniHttpServer
from nicwarden.cni.install import DEFAULT_SOCKET, install_shim
from tests.support.cni_runtime import SHIM, ensure_shim_built

SUPPORTED = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
COMMANDS = ["ADD", "DEL", "CHECK", "STATUS", "GC"]

Run = Callable[..., "Outcome"]


@pytest.fixture(scope="module", autouse=True)
def built_shim() -> None:
    ensure_shim_built()


class Outcome:
    def __init__(self, proc: subprocess.CompletedProcess[bytes], elapsed: float) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed

    def json(self) -> dict[str, object]:
        obj = json.loads(self.stdout)  # fails if a result and an error were both printed
        assert isinstance(obj, dict)
        return obj

    def error(self) -> tuple[int, str]:
        assert self.code == 1, (self.code, self.stdout)
        body = self.json()
        assert isinstance(body["code"], int) and isinstance(body["msg"], str)
        return body["code"], body["msg"]


def make_runner(kind: str, tmp_path: Path) -> Run:
    """One way the shim is deployed: the binary the build put in our venv, or
    the copy `nicwardenctl install-cni` puts in a CNI bin dir."""
    argv = [str(SHIM)] if kind == "installed" else [str(install_shim(tmp_path / "opt-cni-bin"))]

    def run(stdin: bytes | str, timeout: float = 30.0, **env: str | bytes) -> Outcome:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        # A runtime's plugin environment: its own basics plus the CNI_* set.
        full_env = {"PATH": "/usr/bin:/bin", **env}
        start = time.monotonic()
        proc = subprocess.run(argv, input=data, env=full_env, capture_output=True, timeout=timeout)
        return Outcome(proc, time.monotonic() - start)

    return run


@pytest.fixture(params=["installed", "copied"])
def run_shim(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """Every deployment of the shim."""
    return make_runner(request.param, tmp_path)


@pytest.fixture
def run_copy(tmp_path: Path) -> Run:
    """The copied shim only, for the slow (3 s wait) variations."""
    return make_runner("copied", tmp_path)


def cni_env(command: str, **extra: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/cni-1",
        "CNI_IFNAME": "net1",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p",
        **extra,
    }


def conf(version: str = "1.1.0", **extra: object) -> str:
    return json.dumps({"cniVersion": version, "name": "net", "type": "nicwarden", **extra})


class Recorder:
    def __init__(self, answer: tuple[int, bytes] = (0, b"")) -> None:
        self.answer = answer
        self.calls: list[tuple[dict[str, str], str]] = []

    def __call__(self, env: dict[str, str], stdin: str) -> tuple[int, bytes]:
        self.calls.append((env, stdin))
        return self.answer


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "run" / "nicwarden" / "cni.sock"


@pytest.fixture
def agent(sock: Path) -> Iterator[Recorder]:
    recorder = Recorder()
    server = CniHttpServer(sock, recorder)
    server.start()
    yield recorder
    server.stop()


class RawPeer:
    """A unix socket peer that answers each connection with `reply(request)`;
    for answers a real agent never gives."""

    def __init__(self, path: Path, reply: Callable[[bytes], bytes | None], read: bool = True):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.reply, self.read = reply, read
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                request = read_request(conn) if self.read else b""
                self.requests.append(request)
                answer = self.reply(request)
                if answer is not None:
                    conn.sendall(answer)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def raw_peer(sock: Path) -> Iterator[Callable[..., RawPeer]]:
    peers: list[RawPeer] = []

    def make(reply: Callable[[bytes], bytes | None], read: bool = True) -> RawPeer:
        peers.append(RawPeer(sock, reply, read))
        return peers[-1]

    yield make
    for p in peers:
        p.close()


def http(status: str, body: bytes, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------- the binary


def test_shim_is_a_static_executable_with_no_interpreter() -> None:
    # No PT_INTERP: the node needs neither a dynamic loader of ours nor python3.
    data = SHIM.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    types = [
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        for i in range(phnum)
    ]
    assert 1 in types and 3 not in types, types  # PT_LOAD yes, PT_INTERP no
    assert os.access(SHIM, os.X_OK)


def test_shim_runs_with_an_empty_environment_and_no_stdin() -> None:
    proc = subprocess.run([str(SHIM)], env={}, stdin=subprocess.DEVNULL, capture_output=True)
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.1.0",
        "code": 4,
        "msg": "missing environment variables: CNI_COMMAND",
    }


# ------------------------------------------------------------------ VERSION


@pytest.mark.parametrize(
    ("stdin", "answered"),
    [(json.dumps({"cniVersion": v}), v) for v in SUPPORTED]
    + [
        ('{"cniVersion": "0.2.0"}', "1.1.0"),
        ("", "1.1.0"),
        ("{}", "1.1.0"),
        ("junk", "1.1.0"),
        ('{"cniVersion": 4}', "1.1.0"),
        ('["cniVersion", "0.4.0"]', "1.1.0"),
        ('{"a": {"cniVersion": "0.4.0"}}', "1.1.0"),  # only the top level counts
        ('{"cniVersion": "0.4.0", "cniVersion": "1.0.0"}', "1.0.0"),  # the last wins
        ('{"cni\\u0056ersion": "0.3.1"}', "0.3.1"),
        (b'{"cniVersion": "0.4.0", "x": "\xff"}', "1.1.0"),  # undecodable: no echo
    ],
)
def test_version_is_answered_without_an_agent(
    run_shim: Run, sock: Path, stdin: str | bytes, answered: str
) -> None:
    out = run_shim(stdin, CNI_COMMAND="VERSION", NICWARDEN_CNI_SOCKET=str(sock))
    assert out.code == 0
    assert out.json() == {"cniVersion": answered, "supportedVersions": SUPPORTED}
    assert not sock.exists()


def test_version_output_is_what_json_dumps_writes(run_shim: Run) -> None:
    out = run_shim('{"cniVersion": "0.4.0"}', CNI_COMMAND="VERSION")
    expected = {"cniVersion": "0.4.0", "supportedVersions": SUPPORTED}
    assert out.stdout == (json.dumps(expected, indent=4) + "\n").encode()


# -------------------------------------------------------------- forwarding


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize("command", COMMANDS)
def test_request_is_forwarded_with_cni_env_and_raw_stdin(
    run_shim: Run, sock: Path, agent: Recorder, command: str, version: str
) -> None:
    # Whitespace and non-ASCII must arrive untouched: the agent parses the text.
    stdin = (
        f'{{\n  "cniVersion": "{version}", "name": "net",\t"type": "nicwarden", "x": "é€😀"\n}}\n'
    )
    env = cni_env(command, NICWARDEN_CNI_SOCKET=str(sock))
    agent.answer = (0, f'{{"cniVersion":"{version}"}}'.encode())
    out = run_shim(stdin, **env)
    assert (out.code, out.stdout) == (0, agent.answer[1])
    ((got_env, got_stdin),) = agent.calls
    assert got_env == cni_env(command)  # every CNI_* var, nothing else
    assert got_stdin == stdin


def test_wire_format_is_exact(run_shim: Run, sock: Path, raw_peer: Callable[..., RawPeer]) -> None:
    # Every character JSON must escape, and some it must not, in stdin and env.
    stdin = (
        '{"cniVersion":"0.4.0","q":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\u001f","u":"\x7fé😀"}\r\n\t '
    )
    peer = raw_peer(lambda req: http("200 OK", b"done", Content_Length="4", X_CNI_Exit_Code="0"))
    env = cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock), CNI_ARGS='a="b"\\c\t\x01\x7fé')
    out = run_shim(stdin, **env, NOT_CNI="x", CNI="y", CNIX_="z")
    assert (out.code, out.stdout) == (0, b"done")
    ((request,),) = [peer.requests]
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/cni HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers == {
        "Host": "nicwarden-agent",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-CNI-Version": "0.4.0",
        "Connection": "close",
    }
    assert json.loads(body) == {
        "env": {**cni_env("ADD"), "CNI_ARGS": env["CNI_ARGS"]},
        "stdin": stdin,
    }
    # Compact, env sorted by name, valid UTF-8 passed as is (not \u-escaped).
    assert body.startswith(b'{"env":{"CNI_ARGS":"a=\\"b\\"\\\\c\\t\\u0001\x7f\xc3\xa9",')
    assert list(json.loads(body)["env"]) == sorted(cni_env("ADD"))
    assert body.endswith(b'\\"u\\":\\"\x7f\xc3\xa9\xf0\x9f\x98\x80\\"}\\r\\n\\t "}')


@pytest.mark.parametrize(
    ("exit_code", "body"),
    [
        (0, b'{"cniVersion":"1.1.0","interfaces":[{"name":"net1"}]}'),
        (1, b'{"cniVersion": "1.1.0", "code": 7, "msg": "vlan: 5000 is out of range"}\n'),
        (7, b""),
        (255, b"\x00not json at all \xff\xfe"),
    ],
)
def test_output_and_exit_code_pass_through_verbatim(
    run_shim: Run, sock: Path, agent: Recorder, exit_code: int, body: bytes
) -> None:
    agent.answer = (exit_code, body)
    out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert (out.code, out.stdout) == (exit_code, body)


def test_large_result_passes_through(run_shim: Run, sock: Path, agent: Recorder) -> None:
    body = json.dumps(
        {
            "cniVersion": "1.1.0",
            "ips": [{"address": f"10.{i // 256}.{i % 256}.1/32"} for i in range(50000)],
        }
    )
    assert len(body) > 1 << 20
    agent.answer = (0, body.encode())
    out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code == 0 and out.stdout == body.encode()


def test_agent_socket_in_config_wins_over_env(
    run_shim: Run, sock: Path, agent: Recorder, tmp_path: Path
) -> None:
    out = run_shim(
        conf(agentSocket=str(sock)),
        **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(tmp_path / "elsewhere.sock")),
    )
    assert out.code == 0 and len(agent.calls) == 1


def test_escaped_agent_socket_key_and_value_are_decoded(
    run_shim: Run, sock: Path, agent: Recorder
) -> None:
    path = json.dumps(str(sock), ensure_ascii=True).replace("/", "\\/")
    stdin = '{"cniVersion":"1.1.0","\\u0061gentSocket":' + path + "}"
    out = run_shim(stdin, **cni_env("ADD", NICWARDEN_CNI_SOCKET="/nonexistent.sock"))
    assert out.code == 0 and len(agent.calls) == 1


def test_null_agent_socket_falls_back_to_env(run_shim: Run, sock: Path, agent: Recorder) -> None:
    out = run_shim(conf(agentSocket=None), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code == 0 and len(agent.calls) == 1


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (5, "must be an absolute path to a socket"),
        (["/run/x.sock"], "must be an absolute path to a socket"),
        ("", "is not an absolute path"),
        ("run/nicwarden/cni.sock", "is not an absolute path"),
        ("/" + "x" * 120, "is longer than a unix socket path may be"),
        ("/run/a\u0000b", "must be an absolute path to a socket"),
    ],
)
def test_bad_agent_socket_is_error_7_naming_the_key(
    run_shim: Run, sock: Path, value: object, why: str
) -> None:
    out = run_shim(conf(agentSocket=value), **cni_env("DEL", NICWARDEN_CNI_SOCKET=str(sock)))
    code, msg = out.error()
    assert code == 7 and msg.startswith("agentSocket: ") and why in msg
    assert out.elapsed < 2.5  # refused at once, not retried as a transient failure


def test_agent_socket_that_is_not_a_socket_is_error_7(run_shim: Run, tmp_path: Path) -> None:
    regular = tmp_path / "file.sock"
    regular.write_text("")
    for path in (regular, regular / "below"):
        code, msg = run_shim(conf(agentSocket=str(path)), **cni_env("ADD")).error()
        assert (code, msg) == (7, f"agentSocket: {path} is not a socket")


def test_relative_socket_in_env_is_error_4_naming_it(run_shim: Run) -> None:
    out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET="cni.sock"))
    assert out.error() == (4, "NICWARDEN_CNI_SOCKET: cni.sock is not an absolute path to a socket")


def test_handler_crash_becomes_a_cni_error(run_shim: Run, sock: Path) -> None:
    def broken(env: dict[str, str], stdin: str) -> tuple[int, bytes]:
        raise RuntimeError("bug")

    with CniHttpServer(sock, broken):
        out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    code, msg = out.error()
    assert code == 999 and "HTTP 500" in msg


# ----------------------------------------------------------- local errors


@pytest.mark.parametrize(
    ("stdin", "version"),
    [
        (b"", "1.1.0"),
        (b"   ", "1.1.0"),
        (b"{not json", "1.1.0"),
        (b'{"cniVersion": "0.4.0", "name": broken', "0.4.0"),
        (b'{"cniVersion":"1.0.0"} trailing', "1.0.0"),
        (b'{"cniVersion":"1.0.0"} {}', "1.0.0"),
        (b'{"cniVersion":"1.0.0", "a": [1,]}', "1.0.0"),
        (b'{"cniVersion":"1.0.0", "a": 01}', "1.0.0"),
        (b'{"cniVersion":"1.0.0", "a": "tab\there"}', "1.0.0"),
        (b'{"cniVersion":"1.0.0", "a": "\\x"}', "1.0.0"),
        (b'\xef\xbb\xbf{"cniVersion":"1.0.0"}', "1.0.0"),  # a BOM is not JSON
        (b'{"cniVersion": "1.0.0", "name": "\xff\xfe"}', "1.0.0"),  # not UTF-8
        (b'{"cniVersion": "1.0.0", "a": "\xed\xa0\x80"}', "1.0.0"),  # an encoded surrogate
        (b'{"cniVersion": "1.0.0", "a": "\xc0\xaf"}', "1.0.0"),  # overlong
        (b"[" * 600 + b"]" * 600, "1.1.0"),
    ],
)
def test_undecodable_stdin_is_error_6_without_an_agent(
    run_shim: Run, sock: Path, stdin: bytes, version: str
) -> None:
    out = run_shim(stdin, **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code == 1
    body = out.json()
    assert (body["code"], body["cniVersion"]) == (6, version)
    assert str(body["msg"]).startswith("decoding the network config from stdin: ")
    assert out.elapsed < 2.5  # answered locally, no wait for the agent


def test_non_utf8_stdin_names_the_byte(run_shim: Run) -> None:
    stdin = b'{"cniVersion": "0.4.0", "name": "caf\xe9"}'
    code, msg = run_shim(stdin, **cni_env("ADD")).error()
    assert code == 6
    assert msg == (
        "decoding the network config from stdin: not UTF-8: byte 0xe9 at offset 36"
        " cannot start or continue a character"
    )


def test_non_utf8_environment_is_error_4_naming_the_variable(run_shim: Run, sock: Path) -> None:
    env: dict[str, str | bytes] = {**cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock))}
    env["CNI_ARGS"] = b"K=\xff"
    out = run_shim(conf(), **env)
    assert out.error() == (4, "CNI_ARGS: not UTF-8")


@pytest.mark.parametrize(
    ("command", "msg"),
    [("", "missing environment variables: CNI_COMMAND"), ("FROB", "unknown CNI_COMMAND: FROB")],
)
def test_bad_command_is_error_4(run_shim: Run, command: str, msg: str) -> None:
    env = cni_env("ADD")
    if command:
        env["CNI_COMMAND"] = command
    else:
        del env["CNI_COMMAND"]
    out = run_shim(conf("0.4.0"), **env)
    assert out.code == 1
    assert out.json() == {"cniVersion": "0.4.0", "code": 4, "msg": msg}


def test_error_carries_the_callers_version_escaped(run_shim: Run) -> None:
    version = 'x"\\\n\x01é😀'
    out = run_shim(conf(version), **cni_env("FROB"))
    assert out.json()["cniVersion"] == version
    assert out.stdout.isascii()  # like json.dumps: \u escapes, never raw bytes


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1s", "111"])
def test_bad_timeout_is_error_4(run_shim: Run, sock: Path, value: str) -> None:
    env = cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock), NICWARDEN_CNI_TIMEOUT=value)
    code, msg = run_shim(conf(), **env).error()
    assert code == 4 and msg.startswith("NICWARDEN_CNI_TIMEOUT: ")


# --------------------------------------------------------------- oversized


def test_stdin_over_the_shims_limit_is_error_7_without_an_agent(
    run_shim: Run, sock: Path, agent: Recorder
) -> None:
    stdin = b'{"cniVersion": "0.4.0", "pad": "' + b"x" * (4 << 20) + b'"}'
    out = run_shim(stdin, **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    body = out.json()
    assert out.code == 1 and body["code"] == 7 and body["cniVersion"] == "0.4.0"
    assert body["msg"] == "the network config on stdin is larger than 4194304 bytes"
    assert agent.calls == []


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_config_over_the_agents_limit_is_a_permanent_error_naming_it(
    run_shim: Run, sock: Path, agent: Recorder, command: str
) -> None:
    # The agent refuses before reading the body; the shim, still sending,
    # must read that answer instead of failing with a broken pipe (11).
    stdin = json.dumps({"cniVersion": "0.4.0", "name": "n", "pad": "x" * 1_100_000})
    out = run_shim(stdin, **cni_env(command, NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code == 1, out.stdout
    body = out.json()
    assert body["code"] == 7 and body["cniVersion"] == "0.4.0"
    assert "1048576 bytes" in str(body["msg"])
    assert agent.calls == []


# ------------------------------------------------------- malformed replies


@pytest.mark.parametrize(
    ("reply", "code", "msg"),
    [
        (b"garbage\r\n\r\n", 999, "the nicwarden agent sent a malformed status line: 'garbage'"),
        (b"HTTP/1.1 OK\r\n\r\n", 999, "malformed status line"),
        (http("404 Not Found", b"nope\n", Content_Length="5"), 999, "answered HTTP 404: nope"),
        (http("200 OK", b"{}", Content_Length="2"), 999, "no valid x-cni-exit-code"),
        (http("200 OK", b"{}", Content_Length="2", X_CNI_Exit_Code="256"), 999, "x-cni-exit-code"),
        (http("200 OK", b"{}", Content_Length="2", X_CNI_Exit_Code="-1"), 999, "x-cni-exit-code"),
        (http("200 OK", b"{}", X_CNI_Exit_Code="0"), 999, "has no Content-Length"),
        (http("200 OK", b"{}", Content_Length="x2", X_CNI_Exit_Code="0"), 999, "Content-Length"),
        (
            http("200 OK", b"", Content_Length=str(5 << 20), X_CNI_Exit_Code="0"),
            999,
            "larger than 4194304 bytes",
        ),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000, 999, "more than 65536 bytes of headers"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", 11, "closed the connection unanswered"),
        (b"", 11, "closed the connection unanswered"),
        (
            http("200 OK", b'{"cniVer', Content_Length="100", X_CNI_Exit_Code="0"),
            11,
            "answer was cut short",
        ),
    ],
)
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_malformed_reply_is_a_specific_error_never_success(
    run_shim: Run,
    sock: Path,
    raw_peer: Callable[..., RawPeer],
    command: str,
    reply: bytes,
    code: int,
    msg: str,
) -> None:
    peer = raw_peer(lambda req: reply)
    out = run_shim(conf(), **cni_env(command, NICWARDEN_CNI_SOCKET=str(sock)))
    got_code, got_msg = out.error()
    assert got_code == code and msg in got_msg, got_msg
    assert len(peer.requests) == 1  # sent once: never retried


def test_non_json_body_with_an_exit_code_passes_through(
    run_shim: Run, sock: Path, raw_peer: Callable[..., RawPeer]
) -> None:
    # The agent's answer is printed as it is, headers in any case and spacing.
    raw_peer(lambda req: b"HTTP/1.0 200\r\ncontent-length:  3 \r\nx-cni-exit-code:7\r\n\r\nabcdef")
    out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert (out.code, out.stdout) == (7, b"abc")


def test_del_the_agent_did_not_confirm_is_never_success(
    run_shim: Run, sock: Path, raw_peer: Callable[..., RawPeer]
) -> None:
    # The agent took the request and went away without an answer.
    peer = raw_peer(lambda req: None)
    out = run_shim(conf("0.4.0"), **cni_env("DEL", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.error() == (11, "the nicwarden agent closed the connection unanswered")
    assert out.json()["cniVersion"] == "0.4.0"
    assert len(peer.requests) == 1


# ----------------------------------------------------------- a slow agent


@pytest.mark.parametrize("command", ["ADD", "DEL", "STATUS"])
def test_slow_agent_times_out_as_11_and_is_not_retried(
    run_shim: Run, sock: Path, command: str
) -> None:
    release = threading.Event()
    recorder = Recorder((0, b""))

    def slow(env: dict[str, str], stdin: str) -> tuple[int, bytes]:
        recorder(env, stdin)
        release.wait(20)
        return recorder.answer

    with CniHttpServer(sock, slow):
        try:
            env = cni_env(command, NICWARDEN_CNI_SOCKET=str(sock), NICWARDEN_CNI_TIMEOUT="0.5")
            out = run_shim(conf(), **env)
        finally:
            release.set()
    assert out.error() == (11, "the nicwarden agent did not answer within 0.5 s")
    assert len(recorder.calls) == 1


def test_agent_that_never_reads_times_out(
    run_shim: Run, sock: Path, raw_peer: Callable[..., RawPeer]
) -> None:
    # A stuck peer: accepts, reads nothing, answers nothing. The request is
    # larger than the socket buffers, so the shim blocks while sending.
    stuck = threading.Event()
    raw_peer(lambda req: stuck.wait(20) and None, read=False)
    stdin = json.dumps({"cniVersion": "1.1.0", "pad": "x" * 600_000})
    try:
        env = cni_env("DEL", NICWARDEN_CNI_SOCKET=str(sock), NICWARDEN_CNI_TIMEOUT="0.5")
        out = run_shim(stdin, **env)
    finally:
        stuck.set()
    assert out.error() == (11, "the nicwarden agent did not answer within 0.5 s")


# -------------------------------------------------------- unreachable agent


def test_unreachable_agent_on_add_is_error_11_naming_the_socket(run_shim: Run, sock: Path) -> None:
    check_unreachable(run_shim, sock, "ADD")


# STATUS failures are 50 ("not available"); everything else is 11.
@pytest.mark.parametrize(("command", "code"), [("CHECK", 11), ("STATUS", 50), ("GC", 11)])
def test_unreachable_agent_other_commands(
    run_copy: Run, sock: Path, command: str, code: int
) -> None:
    check_unreachable(run_copy, sock, command, code)


def check_unreachable(run: Run, sock: Path, command: str, code: int = 11) -> None:
    out = run(conf("1.1.0"), **cni_env(command, NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code == 1
    body = out.json()
    assert body["code"] == code and body["cniVersion"] == "1.1.0"
    assert str(sock) in str(body["msg"]) and "nicwarden agent is not reachable" in str(body["msg"])
    assert "No such file or directory" in str(body["msg"])
    assert 2.5 <= out.elapsed < 10  # retried for about 3 s, then gave up


def test_unreachable_agent_on_del_is_never_success(run_shim: Run, sock: Path) -> None:
    out = run_shim(conf("0.4.0"), **cni_env("DEL", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code == 1
    assert out.json() == {
        "cniVersion": "0.4.0",
        "code": 11,
        "msg": "could not confirm that attachment c0ffee/net1 was removed: the nicwarden agent"
        f" is not reachable at {sock} (No such file or directory)",
        "details": "DEL must be retried once the agent is running",
    }


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_refused_connection_on_stale_socket_is_retried_then_11(
    run_copy: Run, sock: Path, command: str
) -> None:
    sock.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()  # the file stays; connecting to it is refused
    out = run_copy(conf(), **cni_env(command, NICWARDEN_CNI_SOCKET=str(sock)))
    code, msg = out.error()
    assert code == 11 and "Connection refused" in msg and out.elapsed >= 2.5


def test_default_socket_path_is_named(run_copy: Run) -> None:
    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip("a nicwarden agent may be running on this machine")
    out = run_copy(conf(), **cni_env("ADD"))
    assert f"not reachable at {DEFAULT_SOCKET} (" in str(out.json()["msg"])


def test_agent_that_starts_during_the_wait_is_used(run_shim: Run, sock: Path) -> None:
    recorder = Recorder((0, b"{}"))
    server = CniHttpServer(sock, recorder)
    timer = threading.Timer(0.8, server.start)
    timer.start()
    try:
        out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    finally:
        timer.join()
        server.stop()
    assert (out.code, out.stdout) == (0, b"{}")
    assert len(recorder.calls) == 1


def test_not_ready_agent_is_waited_for_and_the_request_sent_once(run_shim: Run, sock: Path) -> None:
    ready = threading.Event()
    recorder = Recorder((0, b"ok"))
    timer = threading.Timer(0.8, ready.set)
    timer.start()
    with CniHttpServer(sock, recorder, ready=ready.is_set):
        out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    timer.join()
    assert (out.code, out.stdout) == (0, b"ok")
    assert len(recorder.calls) == 1


def test_agent_never_ready_is_error_11(run_copy: Run, sock: Path) -> None:
    recorder = Recorder()
    with CniHttpServer(sock, recorder, ready=lambda: False):
        out = run_copy(conf(), **cni_env("DEL", NICWARDEN_CNI_SOCKET=str(sock)))
    code, msg = out.error()
    assert code == 11 and "not ready" in msg
    assert recorder.calls == []
