"""A version-neutral CNI Result, read from and rendered to the exact JSON shape
of each spec version (libcni's types/040 and types/100)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nicwarden.cni.version import has_1_1_fields, has_ip_version_field, is_supported

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ResultFormatError(ValueError):
    """The object is not a CNI Result of the stated version; the message gives
    the JSON path of the offending field."""


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""  # the netns path for container interfaces, "" for host ones
    mtu: int | None = None  # 1.1.0
    pci_id: str = ""  # 1.1.0: the VF's BDF
    socket_path: str = ""  # 1.1.0: vhost-user and similar


@dataclass(frozen=True)
class IPConfig:
    address: IPInterface  # address with prefix length, host bits kept
    gateway: IPAddress | None = None
    interface: int | None = None  # index into Result.interfaces


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int | None = None  # 1.1.0 ...
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@dataclass(frozen=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def render(self, version: str) -> dict[str, Any]:
        """The JSON object for ``version``; fields the version lacks are dropped
        and empty optional ones omitted, as libcni's omitempty tags do."""
        if not is_supported(version):
            raise ValueError(f"cannot render a result for CNI version {version!r}")
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_render_interface(i, version) for i in self.interfaces]
        if self.ips:
            out["ips"] = [_render_ip(ip, version) for ip in self.ips]
        if self.routes:
            out["routes"] = [_render_route(r, version) for r in self.routes]
        # types/100 drops an empty dns object explicitly; types/040 prints "{}"
        # only because Go's omitempty cannot omit a struct. Omitting it is
        # equivalent for every reader, so all versions omit it.
        if not self.dns.is_empty():
            out["dns"] = _render_dns(self.dns)
        return out


def _render_interface(intf: Interface, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": intf.name}
    if intf.mac:
        out["mac"] = intf.mac
    if has_1_1_fields(version) and intf.mtu:
        out["mtu"] = intf.mtu
    if intf.sandbox:
        out["sandbox"] = intf.sandbox
    if has_1_1_fields(version):
        if intf.socket_path:
            out["socketPath"] = intf.socket_path
        if intf.pci_id:
            out["pciID"] = intf.pci_id
    return out


def _render_ip(ip: IPConfig, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if has_ip_version_field(version):
        out["version"] = str(ip.address.version)
    if ip.interface is not None:
        out["interface"] = ip.interface
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    return out


def _render_route(route: Route, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    if has_1_1_fields(version):
        # Plain ints in libcni (0 omitted) ...
        for key, value in (
            ("mtu", route.mtu),
            ("advmss", route.advmss),
            ("priority", route.priority),
        ):
            if value:
                out[key] = value
        # ... but pointers for table and scope, where 0 is meaningful.
        if route.table is not None:
            out["table"] = route.table
        if route.scope is not None:
            out["scope"] = route.scope
    return out


def _render_dns(dns: DNS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if dns.nameservers:
        out["nameservers"] = list(dns.nameservers)
    if dns.domain:
        out["domain"] = dns.domain
    if dns.search:
        out["search"] = list(dns.search)
    if dns.options:
        out["options"] = list(dns.options)
    return out


# ---------------------------------------------------------------- parsing


def parse_result(obj: object, version: str) -> Result:
    """Read a Result given in ``version``'s format (a prevResult, or an IPAM
    plugin's output).

    Lenient in one direction only: 1.1.0 fields found in an older result are
    kept (libcni's types/100 serves 1.0.0 and 1.1.0 alike, so 1.0.0 results
    from newer plugins can carry them); a present ``ips[].version`` must agree
    with the address.
    """
    if not is_supported(version):
        raise ResultFormatError(f"unsupported result version {version!r}")
    if not isinstance(obj, Mapping):
        raise ResultFormatError("result: not a JSON object")
    interfaces = tuple(
        _parse_interface(item, f"interfaces[{n}]")
        for n, item in enumerate(_list(obj, "interfaces", "interfaces"))
    )
    ips = tuple(
        _parse_ip(item, f"ips[{n}]", len(interfaces))
        for n, item in enumerate(_list(obj, "ips", "ips"))
    )
    routes = tuple(
        _parse_route(item, f"routes[{n}]") for n, item in enumerate(_list(obj, "routes", "routes"))
    )
    dns_obj = obj.get("dns")
    dns = DNS() if dns_obj is None else _parse_dns(dns_obj, "dns")
    return Result(interfaces=interfaces, ips=ips, routes=routes, dns=dns)


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ResultFormatError(f"{where}: not a list")
    return value


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ResultFormatError(f"{where}: not a JSON object")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise ResultFormatError(f"{where}.{key}: missing")
        return ""
    if not isinstance(value, str):
        raise ResultFormatError(f"{where}.{key}: not a string")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ResultFormatError(f"{where}.{key}: not a non-negative integer")
    return value


def _parse_interface(item: object, where: str) -> Interface:
    obj = _obj(item, where)
    return Interface(
        name=_str(obj, "name", where, required=True),
        mac=_str(obj, "mac", where),
        sandbox=_str(obj, "sandbox", where),
        mtu=_opt_int(obj, "mtu", where),
        pci_id=_str(obj, "pciID", where),
        socket_path=_str(obj, "socketPath", where),
    )


def _parse_ip(item: object, where: str, n_interfaces: int) -> IPConfig:
    obj = _obj(item, where)
    text = _str(obj, "address", where, required=True)
    try:
        address = ipaddress.ip_interface(text)
    except ValueError:
        raise ResultFormatError(f"{where}.address: {text!r} is not an address/prefix") from None
    if "/" not in text:
        raise ResultFormatError(f"{where}.address: {text!r} has no prefix length")
    gateway = _opt_ip(obj, "gateway", where)
    index = _opt_int(obj, "interface", where)
    if index is not None and index >= n_interfaces:
        raise ResultFormatError(
            f"{where}.interface: index {index} but the result has {n_interfaces} interface(s)"
        )
    family = obj.get("version")
    if family is not None and family != str(address.version):
        raise ResultFormatError(f"{where}.version: {family!r} does not match address {text!r}")
    return IPConfig(address=address, gateway=gateway, interface=index)


def _opt_ip(obj: Mapping[str, Any], key: str, where: str) -> IPAddress | None:
    text = _str(obj, key, where)
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ResultFormatError(f"{where}.{key}: {text!r} is not an IP address") from None


def _parse_route(item: object, where: str) -> Route:
    obj = _obj(item, where)
    text = _str(obj, "dst", where, required=True)
    try:
        # strict=False: Go's ParseCIDR keeps host bits; the route itself is to
        # the network, which is what the kernel installs.
        dst = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ResultFormatError(f"{where}.dst: {text!r} is not a CIDR") from None
    return Route(
        dst=dst,
        gw=_opt_ip(obj, "gw", where),
        mtu=_opt_int(obj, "mtu", where),
        advmss=_opt_int(obj, "advmss", where),
        priority=_opt_int(obj, "priority", where),
        table=_opt_int(obj, "table", where),
        scope=_opt_int(obj, "scope", where),
    )


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ResultFormatError(f"{where}.{key}: not a list of strings")
    return tuple(value)


def _parse_dns(item: object, where: str) -> DNS:
    obj = _obj(item, where)
    return DNS(
        nameservers=_str_list(obj, "nameservers", where),
        domain=_str(obj, "domain", where),
        search=_str_list(obj, "search", where),
        options=_str_list(obj, "options", where),
    )
