"""Policy problems that used to pass silently: a policy-for naming a NAD that
does not exist is a warning on the policy, and every problem (the policy's
own, and the manifest directory's) is logged once when it appears and once
when it clears, never on every resync."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_policy_enforcer import FakeDatapath, FakeSource, primed, started
from test_policy_helpers import mnp, nad, namespace

from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.k8s import DirectorySource
from nicwarden.agent.policy import Action, Event, PolicyEngine
from nicwarden.agent.store import Store

DENY = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}


def policy_warnings(engine: PolicyEngine, key: str) -> tuple[str, ...]:
    status = engine.policy_status(key)
    assert status is not None
    return status.warnings


def test_policy_for_naming_a_missing_nad_is_a_warning() -> None:
    engine = PolicyEngine()
    engine.apply(Event(Action.ADD, namespace("prod")))
    engine.apply(Event(Action.ADD, mnp(DENY, name="typo", policy_for="net-aa")))
    (warning,) = policy_warnings(engine, "prod/typo")
    assert "prod/net-aa" in warning and "no NetworkAttachmentDefinition" in warning
    # Through the full status too (what ListPolicies shows).
    (row,) = [s for s in engine.status() if s.key == "prod/typo"]
    assert row.ok and row.warnings == (warning,)
    # The NAD appears: the warning clears.
    engine.apply(Event(Action.ADD, nad("prod", "net-aa")))
    assert policy_warnings(engine, "prod/typo") == ()


def test_policy_for_another_namespace_without_its_nad_is_a_warning() -> None:
    engine = PolicyEngine()
    engine.apply(Event(Action.ADD, nad("prod", "net-a")))
    engine.apply(Event(Action.ADD, mnp(DENY, name="x", policy_for="net-a,other/net-a")))
    (warning,) = policy_warnings(engine, "prod/x")
    assert "other/net-a" in warning and "prod/net-a" not in warning


def test_policy_selecting_no_pod_is_not_a_problem() -> None:
    engine = PolicyEngine()
    engine.apply(Event(Action.ADD, nad("prod", "net-a")))
    nobody = {"podSelector": {"matchLabels": {"app": "nobody"}}, "ingress": []}
    engine.apply(Event(Action.ADD, mnp(nobody, name="idle")))
    assert policy_warnings(engine, "prod/idle") == ()


def test_rules_of_a_direction_policy_types_leaves_out_are_a_warning() -> None:
    engine = PolicyEngine()
    engine.apply(Event(Action.ADD, nad("prod", "net-a")))
    spec = {"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{"from": []}], "egress": []}
    engine.apply(Event(Action.ADD, mnp(spec, name="half")))
    (warning,) = policy_warnings(engine, "prod/half")
    assert "spec.ingress has rules" in warning and "no effect" in warning


@pytest.fixture
def enforcer(tmp_path: Path) -> Iterator[tuple[PolicyEnforcer, FakeSource]]:
    store = Store.open(tmp_path / "state")
    source = FakeSource()
    enf = started(store, FakeDatapath(), source)
    primed(enf, source)
    yield enf, source
    enf.stop()
    store.close()


def problem_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.getMessage(), str(getattr(r, "problem", "")))
        for r in caplog.records
        if r.getMessage().startswith("policy problem")
    ]


def test_enforcer_logs_a_problem_once_when_it_appears_and_once_when_it_clears(
    enforcer: tuple[PolicyEnforcer, FakeSource], caplog: pytest.LogCaptureFixture
) -> None:
    enf, source = enforcer
    caplog.set_level(logging.INFO, logger="nicwarden.agent.enforcement")
    typo = mnp(DENY, name="typo", policy_for="net-aa")
    source.deliver(Action.ADD, namespace("prod"), typo)
    for _ in range(3):  # resyncs and unrelated updates log nothing new
        source.deliver(Action.UPDATE, typo)
    logs = problem_logs(caplog)
    assert len(logs) == 1 and logs[0][0] == "policy problem" and "prod/net-aa" in logs[0][1]
    (row,) = [o for o in enf.objects() if o["key"] == "prod/typo"]
    assert row["warnings"] and "prod/net-aa" in row["warnings"][0]
    source.deliver(Action.ADD, nad("prod", "net-aa"))
    source.deliver(Action.UPDATE, typo)
    logs = problem_logs(caplog)
    assert [m for m, _ in logs] == ["policy problem", "policy problem cleared"]


def test_directory_problems_are_logged_once_and_when_they_clear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nicwarden.agent.k8s.directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Gadget\napiVersion: v1\nmetadata: {name: g}\n")
    source = DirectorySource(tmp_path, poll_interval=0.05)
    source.start(lambda event: None)
    try:
        deadline = time.monotonic() + 5
        while not source.synced():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)  # several more polls: no repeats
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("manifest problem") == 1, messages
        bad.unlink()
        deadline = time.monotonic() + 5
        while "manifest problem cleared" not in [r.getMessage() for r in caplog.records]:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.02)
    finally:
        source.stop()
