"""CDI spec files for prepared claims: one transient spec per claim.

The container runtime reads ``<cdi dir>/<vendor>-<class>_<claim uid>.json``
and applies the edits of the devices kubelet names by fully qualified id
(``<driver>/vf=<claim uid>-<device name>``). The claim UID in every device
name keeps names from being reused across claims, as CDI asks.

``cdiVersion`` is the lowest that carries what we write: device nodes with a
``hostPath``, and device names that may start with a digit (a UID can), both
need 0.5.0. A runtime refuses a spec whose version it does not know, so
writing the newest version would only shut out older runtimes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nicwarden.agent.files import atomic_write

CDI_VERSION = "0.5.0"
CDI_CLASS = "vf"
# World-readable like every CDI spec: the runtime reads it, it holds no secret.
FILE_MODE = 0o644


@dataclass(frozen=True)
class DeviceNode:
    path: str  # in the container
    host_path: str
    permissions: str = "rw"

    def document(self) -> dict[str, str]:
        return {"path": self.path, "hostPath": self.host_path, "permissions": self.permissions}


@dataclass(frozen=True)
class CdiDevice:
    name: str  # unqualified: "<claim uid>-<device name>"
    env: tuple[str, ...]  # "KEY=value"
    nodes: tuple[DeviceNode, ...] = ()


def kind(driver: str) -> str:
    return f"{driver}/{CDI_CLASS}"


def device_name(claim_uid: str, device: str) -> str:
    return f"{claim_uid}-{device}"


def qualified_id(driver: str, name: str) -> str:
    """``vendor/class=name``: what kubelet hands to the runtime."""
    return f"{kind(driver)}={name}"


def spec_path(cdi_dir: Path, driver: str, claim_uid: str) -> Path:
    # A transient spec's name: <vendor>-<class>_<id>, a '/' in the id as '_'.
    return cdi_dir / f"{driver}-{CDI_CLASS}_{claim_uid.replace('/', '_')}.json"


def _edits(env: Sequence[str], nodes: Sequence[DeviceNode]) -> dict[str, object]:
    edits: dict[str, object] = {}
    if env:
        edits["env"] = list(env)
    if nodes:
        edits["deviceNodes"] = [n.document() for n in nodes]
    return edits


def spec_document(
    driver: str, devices: Sequence[CdiDevice], claim_env: Sequence[str]
) -> dict[str, object]:
    """The spec JSON: per-device edits, and ``claim_env`` applied whenever any
    device of the claim is requested."""
    if not devices:
        raise ValueError("a CDI spec needs at least one device")
    doc: dict[str, object] = {
        "cdiVersion": CDI_VERSION,
        "kind": kind(driver),
        "devices": [{"name": d.name, "containerEdits": _edits(d.env, d.nodes)} for d in devices],
    }
    if claim_env:
        doc["containerEdits"] = _edits(claim_env, ())
    return doc


def render(document: dict[str, object]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_spec(cdi_dir: Path, driver: str, claim_uid: str, document: dict[str, object]) -> Path:
    """Atomically (temp file and rename): the runtime may read the directory
    at any moment and must never see half a spec.

    Not fsynced: the usual directory (/var/run/cdi) is tmpfs and empty after
    a reboot anyway. What keeps specs present is the store's checkpoint,
    from which :func:`spec_is_current` checks and the plugin re-writes them
    (at start, and on a repeated prepare).
    """
    target = spec_path(cdi_dir, driver, claim_uid)
    atomic_write(target, render(document), FILE_MODE)
    return target


def spec_is_current(
    cdi_dir: Path, driver: str, claim_uid: str, document: dict[str, object]
) -> bool:
    try:
        return spec_path(cdi_dir, driver, claim_uid).read_text() == render(document)
    except (FileNotFoundError, UnicodeDecodeError):
        return False


def remove_spec(cdi_dir: Path, driver: str, claim_uid: str) -> bool:
    """Delete the claim's spec; returns whether it existed."""
    try:
        spec_path(cdi_dir, driver, claim_uid).unlink()
    except FileNotFoundError:
        return False
    return True
