"""One error contract, end to end: every agent error kind, raised inside the
agent, reaches nicwardenctl (real gRPC server and client) and a CNI runtime
(real HTTP endpoint and the shim as a separate process) with its kind,
message and details intact and the documented code."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import cast

import grpc
import pytest

from nicwarden.agent import ctl, errors
from nicwarden.agent.api import AgentService
from nicwarden.agent.api_status import GRPC_CODES, error_from_rpc
from nicwarden.agent.metrics import Metrics
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.cni.dispatch import handle_invocation
from nicwarden.cni.errors import CNI_CODES
from nicwarden.cni.http_endpoint import CniHttpServer
from nicwarden.cni.request import CniRequest
from nicwarden.cni.result import Result
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc
from tests.support.cni_runtime import ensure_shim_built

REPO = Path(__file__).resolve().parents[2]
SHIM = ensure_shim_built()  # the static CNI shim binary

# Written out, not read from the tables: changing a code must change this.
# kind: (gRPC status, CNI code). nicwardenctl exits 1 for every kind.
EXPECTED: dict[str, tuple[grpc.StatusCode, int]] = {
    "invalid_argument": (grpc.StatusCode.INVALID_ARGUMENT, 7),
    "config": (grpc.StatusCode.INVALID_ARGUMENT, 7),
    "not_found": (grpc.StatusCode.NOT_FOUND, 7),
    "already_exists": (grpc.StatusCode.ALREADY_EXISTS, 100),
    "busy": (grpc.StatusCode.FAILED_PRECONDITION, 101),
    "unavailable": (grpc.StatusCode.UNAVAILABLE, 11),
    "unsupported": (grpc.StatusCode.UNIMPLEMENTED, 102),
    "unsupported_field": (grpc.StatusCode.UNIMPLEMENTED, 2),
    "host": (grpc.StatusCode.INTERNAL, 5),
    "store": (grpc.StatusCode.INTERNAL, 5),
    "internal": (grpc.StatusCode.INTERNAL, 999),
}
KINDS = sorted(EXPECTED)


def make_error(kind: str) -> errors.NicwardenError:
    # Non-ASCII and a newline, so the trailer encoding is exercised too.
    return errors.rebuild(kind, f"{kind} happened on ens1f0 — VF 3", f"detail of {kind}\nline 2")


def test_every_kind_has_a_class_and_a_code_on_each_wire() -> None:
    assert set(errors.KINDS) == set(EXPECTED)
    assert set(GRPC_CODES) == set(EXPECTED) and set(CNI_CODES) == set(EXPECTED)
    for kind in errors.KINDS:
        assert type(errors.rebuild(kind, "m")).kind == kind


def test_only_cni_2_and_cni_3_have_the_narrow_spec_meaning() -> None:
    # 3 tells the runtime it need not clean up: no kind may claim it.
    assert 3 not in CNI_CODES.values()
    assert [k for k, code in CNI_CODES.items() if code == 2] == ["unsupported_field"]


def test_unknown_kind_from_a_newer_agent_keeps_its_name() -> None:
    err = errors.rebuild("quota_exceeded", "too many", "d")
    assert (err.kind, err.message, err.details) == ("quota_exceeded", "too many", "d")
    assert isinstance(err, errors.NicwardenError)


def test_unsupported_field_names_key_and_value() -> None:
    err = errors.UnsupportedField.of("trust", "on", "the PF driver has no trust flag")
    assert "trust" in err.message and "'on'" in err.message


# -------------------------------------------------------------------- gRPC


class RaisingRuntime:
    """The two things AgentService.Health touches: health() and metrics."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.raises: BaseException = RuntimeError("unset")
        self.hold: threading.Event | None = None  # set: answer only once released

    def health(self) -> list[tuple[str, bool, str]]:
        if self.hold is not None:
            self.hold.wait(30)
        raise self.raises


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RaisingRuntime]]:
    sock = tmp_path_factory.mktemp("grpc") / "agent.sock"
    runtime = RaisingRuntime()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AgentServicer_to_server(AgentService(cast(AgentRuntime, runtime)), server)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield sock, runtime
    finally:
        server.stop(None).wait()


@pytest.mark.parametrize("kind", KINDS)
def test_grpc_round_trip(
    kind: str, agent: tuple[Path, RaisingRuntime], capsys: pytest.CaptureFixture[str]
) -> None:
    sock, runtime = agent
    sent = make_error(kind)
    runtime.raises = sent
    channel = grpc.insecure_channel(f"unix:{sock}")
    try:
        with pytest.raises(grpc.RpcError) as failed:
            pb_grpc.AgentStub(channel).Health(pb.HealthRequest(), timeout=10)
    finally:
        channel.close()
    assert failed.value.code() == EXPECTED[kind][0]
    got = error_from_rpc(failed.value)
    assert got is not None
    assert (type(got), got.kind, got.message, got.details) == (
        type(sent),
        kind,
        sent.message,
        sent.details,
    )

    # The CLI: exit 1 and "<kind>: <message> (<details>)", never "cannot reach".
    assert ctl.main(["--socket", str(sock), "health"]) == ctl.EXIT_SERVER == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nicwardenctl: {kind}: {sent.message}") and sent.details in err
    assert "cannot reach" not in err


def test_agent_side_unavailable_is_not_unreachable(
    agent: tuple[Path, RaisingRuntime], capsys: pytest.CaptureFixture[str]
) -> None:
    sock, runtime = agent
    runtime.raises = errors.Unavailable(
        "writing '8' to /sys/bus/pci/devices/0000:18:00.0/sriov_numvfs has not returned"
        " after 30s; the PF driver may be stuck"
    )
    assert ctl.main(["--socket", str(sock), "health"]) == 1
    err = capsys.readouterr().err
    assert "unavailable: writing '8'" in err and "cannot reach" not in err


def test_unexpected_exception_is_internal_with_its_type(
    agent: tuple[Path, RaisingRuntime], capsys: pytest.CaptureFixture[str]
) -> None:
    sock, runtime = agent
    runtime.raises = KeyError("ifindex")
    assert ctl.main(["--socket", str(sock), "health"]) == 1
    assert "internal: internal error: KeyError: 'ifindex'" in capsys.readouterr().err


def test_an_agent_too_slow_to_answer_is_exit_1_not_unreachable(
    agent: tuple[Path, RaisingRuntime], capsys: pytest.CaptureFixture[str]
) -> None:
    sock, runtime = agent
    release = threading.Event()
    runtime.raises = errors.Unavailable("late")
    runtime.hold = release
    try:
        assert ctl.main(["--socket", str(sock), "--timeout", "0.3", "health"]) == 1
    finally:
        release.set()
        runtime.hold = None
    err = capsys.readouterr().err
    assert "did not answer within 0.3s" in err and "cannot reach" not in err


def test_only_an_unreachable_socket_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A socket file nobody listens on: the connection is refused.
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    assert ctl.main(["--socket", str(stale), "--timeout", "5", "health"]) == ctl.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert "cannot reach the nicwarden agent" in err and str(stale) in err


# --------------------------------------------------------------------- CNI


class RaisingBackend:
    def __init__(self) -> None:
        self.raises: BaseException = RuntimeError("unset")

    def add(self, request: CniRequest) -> Result:
        raise self.raises

    def delete(self, request: CniRequest) -> None:
        raise self.raises

    def check(self, request: CniRequest) -> None:
        raise self.raises

    def status(self, request: CniRequest) -> None:
        raise self.raises

    def gc(self, request: CniRequest) -> None:
        raise self.raises


@pytest.fixture(scope="module")
def cni_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RaisingBackend]]:
    sock = tmp_path_factory.mktemp("cni") / "cni.sock"
    backend = RaisingBackend()
    with CniHttpServer(sock, lambda env, stdin: handle_invocation(env, stdin, backend)):
        yield sock, backend


def run_shim(sock: Path, command: str) -> subprocess.CompletedProcess[bytes]:
    config = {"cniVersion": "1.1.0", "name": "net-a", "type": "nicwarden"}
    env = {
        "PATH": "/usr/bin:/bin",
        "NICWARDEN_CNI_SOCKET": str(sock),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/cni-x",
        "CNI_IFNAME": "net1",
        "CNI_PATH": "/opt/cni/bin",
    }
    return subprocess.run(
        [str(SHIM)],
        input=json.dumps(config).encode(),
        env=env,
        capture_output=True,
        timeout=30,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_cni_round_trip(kind: str, cni_agent: tuple[Path, RaisingBackend]) -> None:
    sock, backend = cni_agent
    sent = make_error(kind)
    backend.raises = sent
    done = run_shim(sock, "ADD")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout) == {
        "cniVersion": "1.1.0",
        "code": EXPECTED[kind][1],
        "msg": sent.message,
        "details": sent.details,
    }


def test_cni_status_folds_every_kind_into_50(cni_agent: tuple[Path, RaisingBackend]) -> None:
    sock, backend = cni_agent
    backend.raises = errors.Busy("pool empty", "d")
    done = run_shim(sock, "STATUS")
    body = json.loads(done.stdout)
    assert done.returncode == 1 and body["code"] == 50
    assert body["msg"] == "pool empty" and body["details"] == "code 101: d"


def test_policy_and_host_layers_import_no_grpc() -> None:
    probe = (
        "import importlib, pkgutil, sys\n"
        "import nicwarden.agent.policy as p, nicwarden.agent.host as h\n"
        "import nicwarden.agent.errors\n"
        "for pkg in (p, h):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(k for k in sys.modules if k == 'grpc' or k.startswith('grpc.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
