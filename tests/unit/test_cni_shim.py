"""The CNI shim, run as a runtime runs it (env + stdin, a fresh process),
against a real CniHttpServer on a temp socket. This tests the transport, so
the agent side is a recording handler."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nicwarden.cni import shim as shim_module
from nicwarden.cni.http_endpoint import CniHttpServer

REPO = Path(__file__).resolve().parents[2]
SHIM_SOURCE = REPO / "cni" / "shim.py"
INSTALLED = REPO / ".venv" / "bin" / "nicwarden-cni"
HOST_PYTHON = "/usr/bin/python3"
SUPPORTED = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]

Run = Callable[..., "Outcome"]


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


def make_runner(kind: str, tmp_path: Path) -> Run:
    """One way the shim is deployed: the console script in our venv, or a bare
    copy in a CNI bin dir run by the host's python3 (where nicwarden is not
    importable), explicitly or through its #! line as a runtime execs it."""
    if kind == "installed":
        argv = [str(INSTALLED)]
    else:
        bin_dir = tmp_path / "opt-cni-bin"
        bin_dir.mkdir()
        copy = bin_dir / "nicwarden"
        shutil.copyfile(SHIM_SOURCE, copy)
        copy.chmod(0o755)
        argv = [HOST_PYTHON, str(copy)] if kind == "host-python" else [str(copy)]

    def run(stdin: bytes | str, timeout: float = 30.0, **env: str) -> Outcome:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        # A runtime's plugin environment: its own basics plus the CNI_* set.
        full_env = {"PATH": "/usr/bin:/bin", **env}
        start = time.monotonic()
        proc = subprocess.run(argv, input=data, env=full_env, capture_output=True, timeout=timeout)
        return Outcome(proc, time.monotonic() - start)

    return run


@pytest.fixture(params=["installed", "host-python", "shebang"])
def run_shim(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """Every deployment of the shim."""
    return make_runner(request.param, tmp_path)


@pytest.fixture
def run_copy(tmp_path: Path) -> Run:
    """The copied shim only, for the slow (3 s wait) variations."""
    return make_runner("shebang", tmp_path)


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


# ------------------------------------------------------------------ VERSION


@pytest.mark.parametrize(
    ("stdin", "answered"),
    [(json.dumps({"cniVersion": v}), v) for v in SUPPORTED]
    + [
        ('{"cniVersion": "0.2.0"}', "1.1.0"),
        ("", "1.1.0"),
        ("{}", "1.1.0"),
        ("junk", "1.1.0"),
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


# -------------------------------------------------------------- forwarding


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_request_is_forwarded_with_cni_env_and_raw_stdin(
    run_shim: Run, sock: Path, agent: Recorder, command: str
) -> None:
    # Whitespace and non-ASCII must arrive untouched: the agent parses the text.
    stdin = '{\n  "cniVersion": "1.1.0", "name": "net",\t"type": "nicwarden", "x": "é€"\n}\n'
    env = cni_env(command, NICWARDEN_CNI_SOCKET=str(sock))
    out = run_shim(stdin, **env)
    assert out.code == 0 and out.stdout == b""
    ((got_env, got_stdin),) = agent.calls
    assert got_env == cni_env(command)  # every CNI_* var, nothing else
    assert got_stdin == stdin


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
            "ips": [{"address": f"10.{i // 256}.{i % 256}.1/32"} for i in range(5000)],
        }
    )
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


def test_non_string_agent_socket_is_error_7(run_shim: Run) -> None:
    out = run_shim(conf(agentSocket=5), **cni_env("ADD"))
    assert out.code != 0 and out.json()["code"] == 7


def test_handler_crash_becomes_a_cni_error(run_shim: Run, sock: Path) -> None:
    def broken(env: dict[str, str], stdin: str) -> tuple[int, bytes]:
        raise RuntimeError("bug")

    with CniHttpServer(sock, broken):
        out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code != 0
    body = out.json()
    assert body["code"] == 999 and "HTTP 500" in str(body["msg"])


# ----------------------------------------------------------- local errors


@pytest.mark.parametrize(
    ("stdin", "version"),
    [
        (b"", "1.1.0"),
        (b"{not json", "1.1.0"),
        (b'{"cniVersion": "0.4.0", "name": broken', "0.4.0"),
        (b'{"cniVersion":"1.0.0"} trailing', "1.0.0"),
        (b'{"cniVersion": "1.0.0", "name": "\xff\xfe"}', "1.0.0"),  # not UTF-8
    ],
)
def test_undecodable_stdin_is_error_6_without_an_agent(
    run_shim: Run, sock: Path, stdin: bytes, version: str
) -> None:
    out = run_shim(stdin, **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code != 0
    body = out.json()
    assert (body["code"], body["cniVersion"]) == (6, version)
    assert out.elapsed < 2.5  # answered locally, no wait for the agent


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
    assert out.code != 0
    assert out.json() == {"cniVersion": "0.4.0", "code": 4, "msg": msg}


# -------------------------------------------------------- unreachable agent


def test_unreachable_agent_on_add_is_error_11_naming_the_socket(run_shim: Run, sock: Path) -> None:
    check_unreachable(run_shim, sock, "ADD")


# C28: STATUS failures are 50 ("not available"); everything else is 11.
@pytest.mark.parametrize(("command", "code"), [("CHECK", 11), ("STATUS", 50), ("GC", 11)])
def test_unreachable_agent_other_commands(
    run_copy: Run, sock: Path, command: str, code: int
) -> None:
    check_unreachable(run_copy, sock, command, code)


def check_unreachable(run: Run, sock: Path, command: str, code: int = 11) -> None:
    out = run(conf("1.1.0"), **cni_env(command, NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code != 0
    body = out.json()
    assert body["code"] == code and body["cniVersion"] == "1.1.0"
    assert str(sock) in str(body["msg"]) and "nicwarden agent is not reachable" in str(body["msg"])
    assert 2.5 <= out.elapsed < 10  # retried for about 3 s, then gave up


def test_unreachable_agent_on_del_is_never_success(run_shim: Run, sock: Path) -> None:
    out = run_shim(conf("0.4.0"), **cni_env("DEL", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code != 0
    body = out.json()
    assert body["code"] == 11 and body["cniVersion"] == "0.4.0"
    assert "could not confirm that attachment c0ffee/net1 was removed" in str(body["msg"])
    assert str(sock) in str(body["msg"])


def test_refused_connection_on_stale_socket_is_retried_then_11(run_copy: Run, sock: Path) -> None:
    import socket

    sock.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()  # the file stays; connecting to it is refused
    out = run_copy(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.json()["code"] == 11 and "Connection refused" in str(out.json()["msg"])


def test_default_socket_path_is_named(run_copy: Run) -> None:
    if os.path.exists("/run/nicwarden/cni.sock"):
        pytest.skip("a nicwarden agent may be running on this machine")
    out = run_copy(conf(), **cni_env("ADD"))
    assert "/run/nicwarden/cni.sock" in str(out.json()["msg"])


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
    threading.Timer(0.8, ready.set).start()
    with CniHttpServer(sock, recorder, ready=ready.is_set):
        out = run_shim(conf(), **cni_env("ADD", NICWARDEN_CNI_SOCKET=str(sock)))
    assert (out.code, out.stdout) == (0, b"ok")
    assert len(recorder.calls) == 1


def test_agent_never_ready_is_error_11(run_copy: Run, sock: Path) -> None:
    recorder = Recorder()
    with CniHttpServer(sock, recorder, ready=lambda: False):
        out = run_copy(conf(), **cni_env("DEL", NICWARDEN_CNI_SOCKET=str(sock)))
    assert out.code != 0
    assert out.json()["code"] == 11 and "not ready" in str(out.json()["msg"])
    assert recorder.calls == []


# ---------------------------------------------------- single-file contract


def test_shim_source_parses_as_python_3_9() -> None:
    source = SHIM_SOURCE.read_text()
    # Isolated mode without site packages: the shim needs only the stdlib,
    # and skipping site processing halves interpreter start-up per pod.
    assert source.startswith("#!/usr/bin/python3 -IS\n")
    tree = ast.parse(source, feature_version=(3, 9))
    assert not any(isinstance(node, ast.Match) for node in ast.walk(tree))


def test_shim_imports_only_the_standard_library() -> None:
    tree = ast.parse(SHIM_SOURCE.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_shim_start_up_stays_light(sock: Path) -> None:
    # It runs for every pod: the heavy stdlib HTTP and email stacks stay out.
    proc = subprocess.run(
        [HOST_PYTHON, "-X", "importtime", str(SHIM_SOURCE)],
        input=conf().encode(),
        env={"PATH": "/usr/bin:/bin", **cni_env("ADD"), "NICWARDEN_CNI_SOCKET": str(sock)},
        capture_output=True,
        timeout=30,
    )
    modules = {
        line.rsplit("|", 1)[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line
    }
    assert "_socket" in modules  # the trace did record the shim's imports
    assert not modules & {"http.client", "email.parser", "urllib.request", "ssl", "logging"}


def test_request_path_imports_no_pure_python_json_re_or_socket(sock: Path) -> None:
    # Twice per pod: the C cores (_json, _socket) suffice when all goes well;
    # json and re load only for local answers and errors.
    recorder = Recorder()
    with CniHttpServer(sock, recorder):
        proc = subprocess.run(
            [HOST_PYTHON, "-I", "-S", "-X", "importtime", str(SHIM_SOURCE)],
            input=conf().encode(),
            env={"PATH": "/usr/bin:/bin", **cni_env("ADD"), "NICWARDEN_CNI_SOCKET": str(sock)},
            capture_output=True,
            timeout=30,
        )
    assert proc.returncode == 0, proc.stdout
    assert recorder.calls, "the agent side never saw the request"
    modules = {
        line.rsplit("|", 1)[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line
    }
    assert "_socket" in modules
    assert not modules & {"json", "json.decoder", "re", "socket", "typing", "selectors"}


def test_shim_module_exposes_the_console_entry_point() -> None:
    assert callable(shim_module.main)
