"""Which front-end offers each VF: a device plugin pool, DRA, or none.

Exactly one front-end per VF. The config rule: a VF that a device plugin
pool and ``dra:`` both select is an error naming both (checked against the
inventory at start and on every reload). At run time a VF whose attributes
change so that both would select it (a driver selector, after a rebind) is
DRA's: the device plugin skips every VF DRA selects.

Moving VFs between the front-ends on a reload is refused while any moving
VF is in use: allocated by kubelet through the device plugin, prepared for
a ResourceClaim, or attached to a pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nicwarden.agent.model import Inventory
from nicwarden.agent.store import Store
from nicwarden.deviceplugin.config import PoolConfig
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.pools import admitting_selector, selector_matches

DRA = "dra"


@dataclass(frozen=True)
class Overlap:
    address: str
    pool: str
    pool_index: int
    dra_selector: int

    def __str__(self) -> str:
        return (
            f"VF {self.address} is selected by device plugin pool {self.pool!r}"
            f" (resourceList[{self.pool_index}]) and by dra.selectors[{self.dra_selector}]:"
            " a VF may be offered by one front-end only"
        )


def overlaps(inventory: Inventory, pools: Sequence[PoolConfig], dra: DraConfig) -> list[Overlap]:
    if not dra.active:
        return []
    out: list[Overlap] = []
    for pf in inventory.pfs:
        for vf in pf.vfs:
            dra_index = next(
                (i for i, s in enumerate(dra.effective_selectors) if selector_matches(s, vf, pf)),
                None,
            )
            if dra_index is None:
                continue
            for index, pool in enumerate(pools):
                if admitting_selector(pool, vf, pf) is not None:
                    out.append(Overlap(vf.address, pool.name, index, dra_index))
                    break
    return out


def frontends(inventory: Inventory, pools: Sequence[PoolConfig], dra: DraConfig) -> dict[str, str]:
    """VF address -> the pool name, ``"dra"``, or ``""`` (offered by none).
    DRA first, as the device plugin skips what DRA selects."""
    out: dict[str, str] = {}
    for pf in inventory.pfs:
        for vf in pf.vfs:
            if dra.active and any(selector_matches(s, vf, pf) for s in dra.effective_selectors):
                out[vf.address] = DRA
                continue
            pool = next((p.name for p in pools if admitting_selector(p, vf, pf) is not None), "")
            out[vf.address] = pool
    return out


def in_use(store: Store, address: str) -> str | None:
    """Who holds ``address`` now, named for an operator, or None."""
    att = store.attachment_for_device(address)
    if att is not None:
        return f"attached to pod {att.pod_namespace}/{att.pod_name} ({att.container_id[:12]})"
    for claim in store.dra_claims():
        if any(d.get("address") == address for d in claim.devices):
            return f"prepared for ResourceClaim {claim.namespace}/{claim.name} ({claim.state})"
    alloc = store.allocation_for_device(address)
    if alloc is not None:
        pod = f"{alloc.pod_namespace}/{alloc.pod_name}" if alloc.pod_name else "a pod not yet named"
        return f"allocated by kubelet from {alloc.resource} to {pod}"
    return None


def refused_moves(
    inventory: Inventory,
    store: Store,
    old: tuple[Sequence[PoolConfig], DraConfig],
    new: tuple[Sequence[PoolConfig], DraConfig],
) -> list[str]:
    """Why the reload from ``old`` to ``new`` (pools, dra) cannot be taken:
    one line per in-use VF that would change between DRA and the device
    plugin. Moves among device plugin pools are the device plugin's business."""
    before = frontends(inventory, *old)
    after = frontends(inventory, *new)
    problems: list[str] = []
    for address, was in sorted(before.items()):
        now = after.get(address, "")
        if was == now or DRA not in (was, now):
            continue
        holder = in_use(store, address)
        if holder is not None:
            problems.append(
                f"VF {address} would move from {was or 'no front-end'} to {now or 'no front-end'}"
                f" but is {holder}"
            )
    return problems
