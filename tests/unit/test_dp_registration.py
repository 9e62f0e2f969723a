from __future__ import annotations

from pathlib import Path

from nicwarden.agent.backoff import Backoff, BackoffPolicy
from nicwarden.deviceplugin.registration import Registration, register_request


def test_request_fields() -> None:
    req = register_request("intel.com/net", "nicwarden-net.sock")
    assert (req.version, req.endpoint, req.resource_name) == (
        "v1beta1",
        "nicwarden-net.sock",
        "intel.com/net",
    )
    assert req.options.get_preferred_allocation_available and not req.options.pre_start_required


def test_backoff_doubles_and_caps(tmp_path: Path) -> None:
    reg = Registration(Backoff(BackoffPolicy(initial=0.5, cap=3.0, jitter=0.0)))
    req = register_request("intel.com/net", "nicwarden-net.sock")
    delays = []
    for _ in range(6):
        assert reg.due(100.0)
        assert not reg.attempt(
            tmp_path / "kubelet.sock", req, now=100.0, kubelet_identity=None, timeout=0.5
        )
        delays.append(reg.next_attempt - 100.0)
        reg.next_attempt = 0.0  # pretend the delay passed
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert "cannot reach kubelet" in (reg.last_error or "")
    assert not reg.registered
    reg.reset()
    assert reg.failures == 0 and reg.due(0.0)
