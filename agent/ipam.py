"""IPAM delegation with version negotiation, and applying its result inside
the pod's netns.

The complete config goes to the delegate (docs/contracts.md#cni-ipam-delegation), but with ``cniVersion``
lowered to the highest version the delegate speaks when it is older than the
request: Debian's plugins (1.1.1) stop at 1.0.0, and a runtime on 1.1.0 would
otherwise get "incompatible CNI versions" from host-local for every pod.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping
from typing import Any

from nicwarden.agent.host.netlink import Netlink
from nicwarden.cni.delegate import (
    find_plugin,
    ipam_add,
    ipam_check,
    ipam_del,
    ipam_gc,
    plugin_versions,
)
from nicwarden.cni.request import CniRequest
from nicwarden.cni.result import IPConfig, Result
from nicwarden.cni.version import version_key

_versions: dict[tuple[str, str], tuple[str, ...]] = {}
_versions_lock = threading.Lock()


def ipam_section(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    ipam = config.get("ipam")
    return ipam if isinstance(ipam, Mapping) and ipam.get("type") else None


def negotiated_config(req: CniRequest) -> dict[str, Any]:
    """The request's config with cniVersion lowered to what the delegate speaks."""
    config = dict(req.config)
    ipam = ipam_section(config)
    assert ipam is not None
    plugin = str(ipam["type"])
    key = (plugin, req.cni_path)
    with _versions_lock:
        supported = _versions.get(key)
    if supported is None:
        supported = plugin_versions(plugin, req.env, req.cni_path)
        with _versions_lock:
            _versions[key] = supported
    wanted = str(config.get("cniVersion", req.cni_version))
    if wanted not in supported:
        older = [v for v in supported if version_key(v) < version_key(wanted)]
        if older:
            config["cniVersion"] = max(older, key=version_key)
    config.pop("prevResult", None)
    return config


def require_plugin(req: CniRequest) -> None:
    """Fail before any kernel change when the IPAM plugin cannot be run:
    found out only at IPAM ADD, the VF would already be in the pod, and the
    rollback's IPAM DEL would fail the same way."""
    ipam = ipam_section(req.config)
    if ipam is not None:
        find_plugin(str(ipam["type"]), req.cni_path)


def add(req: CniRequest) -> Result:
    return ipam_add(negotiated_config(req), req.env, req.cni_path)


def delete(req: CniRequest) -> None:
    ipam_del(negotiated_config(req), req.env, req.cni_path)


def check(req: CniRequest) -> None:
    ipam_check(negotiated_config(req), req.env, req.cni_path)


def gc(req: CniRequest) -> bool:
    return ipam_gc(negotiated_config(req), req.env, req.cni_path)


def for_interface(result: Result, index: int = 0) -> Result:
    """IPAM results carry no interface indexes; point every IP at ours."""
    ips = tuple(
        IPConfig(address=ip.address, gateway=ip.gateway, interface=index) for ip in result.ips
    )
    return Result(interfaces=result.interfaces, ips=ips, routes=result.routes, dns=result.dns)


def apply(net: Netlink, ifname: str, result: Result) -> None:
    """Addresses, then routes (metric 0). A default route is skipped when the
    pod already has one (SPEC: the primary network owns it)."""
    for ip in result.ips:
        net.add_address(ifname, str(ip.address))
    existing = {r.dst for r in net.routes(ifname)}
    for route in result.routes:
        dst = str(route.dst)
        if dst in existing:
            continue
        if ipaddress.ip_network(dst).prefixlen == 0 and _has_default(net, dst):
            continue
        gw = str(route.gw) if route.gw else _gateway_for(result, dst)
        net.add_route(dst, gw, ifname)


def _has_default(net: Netlink, dst: str) -> bool:
    for link in net.links():
        if link.name == "lo":
            continue
        if any(r.dst == dst for r in net.routes(link.name)):
            return True
    return False


def _gateway_for(result: Result, dst: str) -> str | None:
    family = ipaddress.ip_network(dst).version
    for ip in result.ips:
        if ip.gateway is not None and ip.gateway.version == family:
            return str(ip.gateway)
    return None
