"""Install the CNI shim into a CNI bin directory, atomically.

The shim is a static binary (``cni/shim.c``, built by ``scripts/build-shim``
into the environment's ``bin/`` as ``nicwarden-cni``), so the node needs no
interpreter. The runtime may exec the plugin at any moment (kubelet retries
sandboxes), so the file is written beside the target and renamed over it: an
exec sees the old complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nicwarden.agent.files import atomic_write

PLUGIN_NAME = "nicwarden"
SHIM_NAME = "nicwarden-cni"
# The socket the shim uses when neither the config's agentSocket nor
# $NICWARDEN_CNI_SOCKET names one (DEFAULT_SOCKET in cni/shim.c).
DEFAULT_SOCKET = "/run/nicwarden/cni.sock"

_ELF_MAGIC = b"\x7fELF"


def shim_binary() -> Path:
    """Where the build put the shim: the running environment's bin directory."""
    return Path(sys.prefix) / "bin" / SHIM_NAME


def install_shim(bin_dir: Path, name: str = PLUGIN_NAME, source: Path | None = None) -> Path:
    source = source or shim_binary()
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the CNI shim binary {source} is missing (build it with scripts/build-shim)"
        ) from None
    if not data.startswith(_ELF_MAGIC):
        # An older install left a Python script here; it must not reach a node.
        raise ValueError(f"{source} is not the compiled CNI shim (rebuild with scripts/build-shim)")
    target = bin_dir / name
    atomic_write(target, data, 0o755, fsync=True)
    return target


def uninstall_shim(bin_dir: Path, name: str = PLUGIN_NAME) -> bool:
    target = bin_dir / name
    if not target.exists():
        return False
    target.unlink()
    return True
