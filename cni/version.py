"""The CNI spec versions we speak, and the per-version rules that depend on them."""

from __future__ import annotations

from typing import TypeGuard

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

# The first spec version that defines each command (SPEC "Parameters" per tag;
# skel answers error 1 below these).
COMMAND_MIN_VERSION: dict[str, str] = {
    "CHECK": "0.4.0",
    "GC": "1.1.0",
    "STATUS": "1.1.0",
}


def version_key(version: str) -> tuple[int, int, int]:
    """Semver triple for comparisons; raises ValueError for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a CNI version: {version!r}")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def is_supported(version: object) -> TypeGuard[str]:
    return isinstance(version, str) and version in SUPPORTED_VERSIONS


def at_least(version: str, minimum: str) -> bool:
    return version_key(version) >= version_key(minimum)


def has_ip_version_field(version: str) -> bool:
    """``ips[].version`` exists up to 0.4.0 and was removed in 1.0.0."""
    return version_key(version) < (1, 0, 0)


def has_1_1_fields(version: str) -> bool:
    """Interface mtu/pciID/socketPath and route mtu/advmss/priority/table/scope."""
    return version_key(version) >= (1, 1, 0)


def version_answer(requested: object) -> dict[str, object]:
    """The VERSION command's output. The SPEC says to echo the input version;
    when it is absent or one we do not speak, we answer with our newest."""
    chosen = requested if is_supported(requested) else CURRENT_VERSION
    return {"cniVersion": chosen, "supportedVersions": list(SUPPORTED_VERSIONS)}
