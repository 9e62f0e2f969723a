"""Finding a VF's netdev in whichever network namespace holds it, by PCI
address, and bringing it back to the host's.

A VF moved by someone else (or by an agent whose state was lost) may sit in
any netns: named ones under /run/netns, or one only a process holds. Its
netdev is recognised by its parent device (the kernel reports a NIC
function's PCI address as ``IFLA_PARENT_DEV_NAME``) or, on a simulated node
whose VFs are veths, by the alias the simulator gives them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from nicwarden.agent.errors import NicwardenError
from nicwarden.agent.host.discovery import host_netdev
from nicwarden.agent.host.netlink import LinkInfo, Netlink
from nicwarden.agent.host.netns import NETNS_DIR
from nicwarden.agent.host.nsid import host_netns_ids, netns_id
from nicwarden.agent.host.paths import HostPaths

log = logging.getLogger(__name__)


def is_vf_link(link: LinkInfo, address: str) -> bool:
    return link.parent == address or link.alias.endswith(f":{address}")


def candidate_netns() -> Iterator[str]:
    """One path per network namespace other than the host's."""
    seen = set(host_netns_ids())
    paths: list[str] = []
    if NETNS_DIR.is_dir():
        paths += sorted(str(p) for p in NETNS_DIR.iterdir())
    paths += [f"/proc/{pid}/ns/net" for pid in sorted(os.listdir("/proc")) if pid.isdigit()]
    for path in paths:
        ident = netns_id(path)
        if ident is None or ident in seen:
            continue
        seen.add(ident)
        yield path


def find_away(address: str) -> tuple[str, str] | None:
    """(netns path, link name) of the VF's netdev outside the host netns."""
    for path in candidate_netns():
        try:
            links = Netlink(path).links()
        except (NicwardenError, OSError):
            continue  # gone meanwhile, or not enterable
        for link in links:
            if is_vf_link(link, address):
                return path, link.name
    return None


def bring_home(paths: HostPaths, address: str, name: str | None) -> str | None:
    """Move the VF's netdev to the host netns (if elsewhere) under ``name``
    (its recorded home name; None keeps whatever it has), and set it up.
    Returns what was done, or None when the netdev is nowhere reachable."""
    here = host_netdev(paths, address)
    if here is not None:
        current, done = here.name, "already in the host netns"
    else:
        away = find_away(address)
        if away is None:
            return None
        netns, link = away
        Netlink(netns).move_to_netns(link, None, new_name=name or None)
        current, done = name or link, f"moved back from {netns} ({link})"
    with Netlink(None) as host:
        if host.link(current) is None:
            # The move returned before sysfs caught up: find it by address.
            found = next((x for x in host.links() if is_vf_link(x, address)), None)
            if found is None:
                return None
            current = found.name
        host.set_link(current, new_name=name if name and name != current else None, up=True)
    if name and name != current:
        done += f", renamed {current} to {name}"
    log.info("VF brought home", extra={"vf": address, "how": done})
    return done
