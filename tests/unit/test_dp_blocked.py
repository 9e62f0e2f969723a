"""VFs the agent holds back (out of place with no attachment to explain it)
are advertised Unhealthy, with the reason, whatever their link says."""

from __future__ import annotations

from nicwarden.deviceplugin.config import parse_resource_list
from nicwarden.deviceplugin.state import evaluate
from tests.support.kubelet_fake import PfSpec, VfSpec, build_inventory, vf_address

PF = "0000:18:00.0"


def test_blocked_vf_is_unhealthy_with_its_reason() -> None:
    inv = build_inventory([PfSpec(PF, vfs=[VfSpec(0, netdev_state=None), VfSpec(1)])])
    (pool,) = parse_resource_list([{"resourceName": "p"}], "example.com").pools
    away, home = vf_address(PF, 0), vf_address(PF, 1)

    assert [h for _, h, _ in evaluate(inv, [pool])["p"].wire] == ["Healthy", "Healthy"]
    state = evaluate(inv, [pool], {away: "its netdev is not in the host network namespace"})["p"]
    assert state.wire[0][:2] == (away, "Unhealthy") and state.wire[1][:2] == (home, "Healthy")
    assert state.by_id[away].problem == "its netdev is not in the host network namespace"
    assert state.healthy_count == 1
