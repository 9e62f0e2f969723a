"""Hostile CNI input through the real shim, against the real agent on a
simulated node, as a runtime would exec it.

A state machine interleaves valid ADD/DEL with hostile environments,
configs and raw stdin. After every step: the reply is a success or one
specific CNI error (never a traceback, never code 999), and the node
invariant of ``FuzzNode.check`` holds (every VF home or attached exactly as
the store says, no stray lease, host addresses and routes untouched, the
agent answering).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.fuzz.conftest import examples
from tests.support.agent_proc import SHIM
from tests.support.fuzz_node import FUZZ_SUBNET, FuzzNode

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.fuzz]

GOOD_IFNAMES = ("net1", "net2", "eth1")
# Names the kernel would rewrite (%d), refuse, or that are not one name.
BAD_IFNAMES = ("net%d", "%s", "..", ".", "a/b", "a:b", "a b", "", "x" * 16, "é" * 8, "eth0\n", "lo")
SAFE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
DELEGATES = ("host-local:", "static:")


@dataclass(frozen=True)
class Attached:
    container: str
    netns: str
    ifname: str
    device: str


def exec_shim(env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run([SHIM], input=stdin, env=full, capture_output=True, timeout=60)


def reply_ok_or_specific(proc: subprocess.CompletedProcess[bytes], command: str) -> Any:
    """The CNI reply contract: exit 0 with a result (or nothing, for DEL and
    friends), or non-zero with exactly one error object carrying a specific
    code and a message. Returns the parsed stdout."""
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    text = proc.stdout.decode()
    body = json.loads(text) if text.strip() else None
    if proc.returncode == 0:
        assert body is None or "code" not in body, f"{command}: success carrying an error: {text}"
        return body
    assert isinstance(body, dict), f"{command} failed with no error object: {text!r} {err}"
    assert isinstance(body.get("code"), int), body
    assert isinstance(body.get("msg"), str) and body["msg"].strip(), body
    # 999 is allowed only as a delegate's own verdict, passed through as the
    # CNI conventions ask (e.g. host-local refusing unknown CNI_ARGS).
    assert body["code"] != 999 or body["msg"].startswith(DELEGATES), body
    return body


def config_mutations(node: FuzzNode) -> st.SearchStrategy[dict[str, Any]]:
    valid_ipam = {"type": "host-local", "subnet": FUZZ_SUBNET, "dataDir": str(node.ipam_dir)}
    choices: dict[str, st.SearchStrategy[Any]] = {
        "cniVersion": st.sampled_from(
            ["0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0", "9.9.9", "", None, 1]
        ),
        "deviceID": st.sampled_from(
            [
                *node.VFS,
                node.PF,
                "0000:99:00.0",
                "18:01.1",
                "0000:18:01.9",
                "",
                "x",
                None,
                7,
                [node.VFS[1]],
            ]
        ),
        "vlan": st.one_of(st.integers(-5, 5000), st.sampled_from(["10", None, 1.5, True])),
        "vlanQoS": st.integers(-1, 9),
        "vlanProto": st.sampled_from(["802.1q", "802.1ad", "802.1x", ""]),
        "mac": st.sampled_from(
            [
                "02:00:00:00:00:01",
                "ff:ff:ff:ff:ff:ff",
                "00:00:00:00:00:00",
                "zz",
                "",
                5,
                "02:00:00:00:00:01:02",
            ]
        ),
        "spoofchk": st.sampled_from(["on", "off", "maybe", True, None]),
        "trust": st.sampled_from(["on", "off", "", 0]),
        "link_state": st.sampled_from(["auto", "enable", "disable", "sideways", 1]),
        "min_tx_rate": st.integers(-1, 2**33),
        "max_tx_rate": st.integers(-1, 2**33),
        "mtu": st.integers(-1, 70000),
        "name": st.sampled_from(["fuzznet", "", "a/b", "../escape", "x" * 300, "ok-name.1"]),
        "ipam": st.sampled_from(
            [
                valid_ipam,
                {"type": "nonexistent-plugin"},
                {},
                None,
                "host-local",
                {"type": "host-local", "dataDir": str(node.ipam_dir)},
                {"type": "../../../bin/true"},
                {"type": "static", "addresses": [{"address": "10.231.0.200/24"}]},
            ]
        ),
        "agentSocket": st.sampled_from(
            [str(node.agent.cni_sock), "relative.sock", "/nonexistent/x.sock", 5]
        ),
        "runtimeConfig": st.sampled_from([{}, {"deviceID": node.VFS[2]}, {"deviceID": 3}, [], "x"]),
        "prevResult": st.sampled_from([{}, {"cniVersion": "1.0.0", "interfaces": "x"}, None, []]),
    }
    extra = st.dictionaries(SAFE_TEXT, st.one_of(st.integers(), SAFE_TEXT, st.none()), max_size=3)
    one_or_two = st.lists(st.sampled_from(sorted(choices)), min_size=1, max_size=2, unique=True)
    picked = one_or_two.flatmap(lambda keys: st.fixed_dictionaries({k: choices[k] for k in keys}))
    return st.builds(lambda p, e: {**p, **e}, picked, st.one_of(st.just({}), extra))


def raw_stdin() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from(
            [
                b"",
                b"{",
                b"[]",
                b"null",
                b'{"cniVersion": "1.0.0"',
                b'{"cniVersion": "1.0.0", "name": "x", "type": "nicwarden"}\xff\xfe',
                b"[" * 100_000 + b"]" * 100_000,
                b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                b'{"cniVersion": "1.0.0", "name": "x", "pad": "' + b"A" * 1_100_000 + b'"}',
                '{"cniVersion": "1.0.0", "name": "n\u00e9t", "type": "nicwarden"}'.encode(),
            ]
        ),
    )


class CniMachine(RuleBasedStateMachine):
    node: FuzzNode

    def __init__(self) -> None:
        super().__init__()
        self.attached: dict[tuple[str, str], Attached] = {}
        # Every example starts from a clean node, whatever the last left.
        self.node.release_all()

    def env(self, command: str, container: str, netns: str, ifname: str) -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME={container}",
        }

    def _add(self, env: dict[str, str], conf: dict[str, Any]) -> None:
        proc = exec_shim(env, json.dumps(conf).encode())
        body = reply_ok_or_specific(proc, "ADD")
        if proc.returncode == 0:
            iface = body["interfaces"][0]
            assert iface["name"] == env["CNI_IFNAME"], body
            assert iface["sandbox"] == env["CNI_NETNS"], body
            device = conf.get("deviceID") or conf.get("runtimeConfig", {}).get("deviceID")
            key = (env["CNI_CONTAINERID"], env["CNI_IFNAME"])
            self.attached[key] = Attached(
                *key[:1], env["CNI_NETNS"], env["CNI_IFNAME"], str(device)
            )

    def _del(self, env: dict[str, str], conf: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
        proc = exec_shim({**env, "CNI_COMMAND": "DEL"}, json.dumps(conf).encode())
        reply_ok_or_specific(proc, "DEL")
        return proc

    @rule(pod=st.integers(0, 2), vf=st.integers(0, 3), ifname=st.sampled_from(GOOD_IFNAMES))
    def add_valid(self, pod: int, vf: int, ifname: str) -> None:
        env = self.env("ADD", f"pod{pod}", self.node.netns_path(pod), ifname)
        self._add(env, self.node.config(deviceID=self.node.VFS[vf]))

    def _hostile_env(self, pod: int, data: Any) -> dict[str, str]:
        """A valid ADD environment with one or two variables made hostile:
        one bad thing at a time is what finds the check that is missing."""
        env = self.env("ADD", f"pod{pod}", self.node.netns_path(pod), "net1")
        agent_ns = f"/proc/{self.node.agent.proc.pid}/ns/net"
        hostile: dict[str, st.SearchStrategy[str]] = {
            "CNI_NETNS": st.sampled_from(
                [
                    "/proc/self/ns/net",
                    "/proc/1/ns/net",
                    agent_ns,
                    "/var/run/netns/nope-fz",
                    "rel/ns",
                    "",
                    "/dev/null",
                    "/",
                    "/proc/self/ns/mnt",
                    "/tmp",
                    "/var/run/netns/../netns/" + self.node.netns[pod],
                ]
            ),
            "CNI_IFNAME": st.one_of(st.sampled_from(BAD_IFNAMES), SAFE_TEXT),
            "CNI_CONTAINERID": st.one_of(
                st.sampled_from(["", "-", "a" * 300, "../x", "pod1"]), SAFE_TEXT
            ),
            "CNI_ARGS": st.one_of(
                st.sampled_from(
                    [
                        "K8S_POD_NAME",
                        "=;=;",
                        "K8S_POD_NAMESPACE=a;K8S_POD_NAMESPACE=b",
                        "IgnoreUnknown=0;X=1",
                    ]
                ),
                SAFE_TEXT,
            ),
            "CNI_PATH": st.sampled_from(
                ["", "/nonexistent", "relative", "/tmp", "/usr/lib/cni:/nonexistent"]
            ),
        }
        for var in data.draw(
            st.lists(st.sampled_from(sorted(hostile)), min_size=1, max_size=2, unique=True)
        ):
            env[var] = data.draw(hostile[var])
        return env

    @rule(pod=st.integers(0, 2), data=st.data())
    def add_hostile_env(self, pod: int, data: Any) -> None:
        self._add(self._hostile_env(pod, data), self.node.config(deviceID=self.node.VFS[pod]))

    @rule(pod=st.integers(0, 2), ifname=st.sampled_from(GOOD_IFNAMES), data=st.data())
    def add_hostile_config(self, pod: int, ifname: str, data: Any) -> None:
        env = self.env("ADD", f"pod{pod}", self.node.netns_path(pod), ifname)
        conf = self.node.config(deviceID=self.node.VFS[pod])
        conf.update(data.draw(config_mutations(self.node)))
        self._add(env, conf)

    @rule(pod=st.integers(0, 2), ifname=st.sampled_from(GOOD_IFNAMES), vf=st.integers(0, 3))
    def delete(self, pod: int, ifname: str, vf: int) -> None:
        env = self.env("DEL", f"pod{pod}", self.node.netns_path(pod), ifname)
        proc = self._del(env, self.node.config(deviceID=self.node.VFS[vf]))
        assert proc.returncode == 0, f"DEL must be idempotent: {proc.stdout!r}"
        self.attached.pop((f"pod{pod}", ifname), None)

    @rule(
        command=st.sampled_from(COMMANDS),
        pod=st.integers(0, 2),
        ifname=st.sampled_from(GOOD_IFNAMES),
    )
    def other_command(self, command: str, pod: int, ifname: str) -> None:
        env = self.env(command, f"pod{pod}", self.node.netns_path(pod), ifname)
        conf = self.node.config()
        if command in ("CHECK",) and (f"pod{pod}", ifname) in self.attached:
            conf["deviceID"] = self.attached[(f"pod{pod}", ifname)].device
        proc = exec_shim(env, json.dumps(conf).encode())
        reply_ok_or_specific(proc, command)
        if command == "DEL":
            assert proc.returncode == 0
            self.attached.pop((f"pod{pod}", ifname), None)

    @rule(
        command=st.sampled_from([*COMMANDS, "add", "EXPLODE", ""]),
        stdin=raw_stdin(),
        pod=st.integers(0, 2),
    )
    def raw(self, command: str, stdin: bytes, pod: int) -> None:
        env = self.env(command, f"raw{pod}", self.node.netns_path(pod), "net9")
        proc = exec_shim(env, stdin)
        reply_ok_or_specific(proc, command)
        assert not (command == "ADD" and proc.returncode == 0), "ADD succeeded on raw garbage"

    @invariant()
    def node_consistent(self) -> None:
        self.node.check()

    def teardown(self) -> None:
        for att in list(self.attached.values()):
            env = self.env("DEL", att.container, att.netns, att.ifname)
            self._del(env, self.node.config(deviceID=att.device))
        self.node.release_all()
        self.node.check()


@pytest.mark.timeout(1800)
def test_cni_state_machine(node: FuzzNode) -> None:
    CniMachine.node = node
    run_state_machine_as_test(
        CniMachine,
        settings=settings(max_examples=examples(50), stateful_step_count=12),
    )


# Inputs that once stranded a VF, touched the host or crashed the shim:
# always run, whatever the generator draws.
SEEDS: list[tuple[str, Any]] = [
    ("CNI_IFNAME", "net%d"),
    ("CNI_IFNAME", "é" * 8),
    ("CNI_NETNS", "/proc/self/ns/net"),
    ("CNI_NETNS", "/proc/1/ns/net"),
    ("CNI_NETNS", "agent"),
    ("stdin", b"[" * 100_000 + b"]" * 100_000),
    ("stdin", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("stdin", b'{"cniVersion": "1.0.0", "pad": "' + b"A" * 1_100_000 + b'"}'),
    ("stdin", b'{"cniVersion": "1.0.0", "name": "x", "type": "nicwarden"}\xff\xfe'),
]


@pytest.mark.parametrize(
    ("what", "value"), SEEDS, ids=[f"{w}-{i}" for i, (w, _) in enumerate(SEEDS)]
)
def test_known_hostile_input(node: FuzzNode, what: str, value: Any) -> None:
    CniMachine.node = node
    machine = CniMachine()
    try:
        env = machine.env("ADD", "seed", node.netns_path(0), "net1")
        conf = node.config(deviceID=node.VFS[0])
        if what == "stdin":
            proc = exec_shim(env, value)
            reply_ok_or_specific(proc, "ADD")
            assert proc.returncode != 0
        else:
            env[what] = f"/proc/{node.agent.proc.pid}/ns/net" if value == "agent" else value
            proc = exec_shim(env, json.dumps(conf).encode())
            body = reply_ok_or_specific(proc, "ADD")
            assert proc.returncode != 0, f"{what}={value!r} accepted: {body}"
            assert body["code"] == 4, (
                f"{what}={value!r}: expected invalid environment (4), got {body}"
            )
            assert what in body["msg"], f"the error should name {what}: {body}"
        machine.node_consistent()
    finally:
        machine.teardown()
