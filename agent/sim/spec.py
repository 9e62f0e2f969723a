"""What a simulated node looks like: ``2x8`` or a mapping (from YAML).

Mapping form::

    pfs:
      - {model: e810, totalVfs: 16, numVfs: 8, numa: 0}
      - {model: cx6dx, numVfs: 4}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nicwarden.agent.errors import ConfigError

MAX_VFS = 248  # 31 device numbers x 8 functions on one simulated bus


@dataclass(frozen=True)
class NicModel:
    vendor: str
    pf_device: str
    vf_device: str
    pf_driver: str
    vf_driver: str


MODELS = {
    "e810": NicModel("8086", "1592", "1889", "ice", "iavf"),
    "x710": NicModel("8086", "1572", "154c", "i40e", "iavf"),
    "cx6dx": NicModel("15b3", "101d", "101e", "mlx5_core", "mlx5_core"),
}


@dataclass(frozen=True)
class PfSpec:
    model: str = "e810"
    total_vfs: int = 64
    num_vfs: int = 8
    numa: int = 0

    @property
    def nic(self) -> NicModel:
        return MODELS[self.model]


@dataclass(frozen=True)
class SimSpec:
    pfs: tuple[PfSpec, ...]


_SHORT = re.compile(r"^(\d+)x(\d+)$")


def parse_spec(value: str | Mapping[str, Any] | None) -> SimSpec:
    """``None`` → the default ``2x8``; ``NxM``; a YAML file path; or a mapping."""
    if value is None:
        value = "2x8"
    if isinstance(value, str):
        m = _SHORT.match(value.strip())
        if m:
            n, vfs = int(m.group(1)), int(m.group(2))
            if not 1 <= n <= 16:
                raise ConfigError(f"simulate: {value!r}: PF count must be 1-16")
            if not 0 <= vfs <= MAX_VFS:
                raise ConfigError(f"simulate: {value!r}: VFs per PF must be 0-{MAX_VFS}")
            total = max(64, vfs)
            return SimSpec(tuple(PfSpec("e810", total, vfs, i % 2) for i in range(n)))
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"simulate: {value!r} is neither NxM (e.g. 2x8) nor a YAML file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"simulate: {path}: invalid YAML: {e}") from e
        if not isinstance(data, Mapping):
            raise ConfigError(f"simulate: {path}: expected a mapping with 'pfs'")
        return _from_mapping(data, str(path))
    return _from_mapping(value, "simulate")


def _from_mapping(data: Mapping[str, Any], where: str) -> SimSpec:
    unknown = set(data) - {"pfs"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected 'pfs'")
    pfs = data.get("pfs")
    if not isinstance(pfs, list) or not pfs or len(pfs) > 16:
        raise ConfigError(f"{where}: pfs: expected a list of 1-16 PF mappings")
    out = []
    for i, raw in enumerate(pfs):
        key = f"{where}: pfs[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{key}: expected a mapping")
        bad = set(raw) - {"model", "totalVfs", "numVfs", "numa"}
        if bad:
            raise ConfigError(f"{key}: unknown key(s) {sorted(bad)}")
        model = raw.get("model", "e810")
        if model not in MODELS:
            raise ConfigError(f"{key}.model: {model!r} is not one of {sorted(MODELS)}")
        total = _int(raw.get("totalVfs", 64), f"{key}.totalVfs", 1, MAX_VFS)
        num = _int(raw.get("numVfs", 8), f"{key}.numVfs", 0, total)
        numa = _int(raw.get("numa", i % 2), f"{key}.numa", -1, 63)
        out.append(PfSpec(model, total, num, numa))
    return SimSpec(tuple(out))


def _int(value: object, key: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{key}: expected an integer {lo}-{hi}, got {value!r}")
    return value
