"""Executing a delegated CNI plugin (IPAM), per docs/contracts.md#cni-ipam-delegation:
same environment with CNI_COMMAND replaced, the complete config on stdin,
its errors returned to our caller with its code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from nicwarden.cni.errors import (
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    TRY_AGAIN_LATER,
    CniError,
)
from nicwarden.cni.result import Result, ResultFormatError, parse_result
from nicwarden.cni.version import CURRENT_VERSION

DEFAULT_TIMEOUT = 30.0  # host-local is ~ms; a dhcp IPAM waiting on a lease is the slow case
_STDERR_IN_MSG = 500  # bytes of a silent failure's stderr quoted in the error


def find_plugin(plugin_type: str, cni_path: str) -> str:
    """The executable for ``plugin_type`` in the colon-separated ``cni_path``."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        # A type is a file name looked up in CNI_PATH, never a path.
        raise CniError(INVALID_CONFIG, f"plugin type {plugin_type!r} is not a plugin name")
    dirs = [d for d in cni_path.split(":") if d]
    if not dirs:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_PATH is empty: cannot find the {plugin_type!r} plugin",
        )
    for directory in dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        INVALID_CONFIG,
        f"failed to find plugin {plugin_type!r} in CNI_PATH {cni_path!r}",
    )


def run_plugin(
    plugin_type: str,
    command: str,
    env: Mapping[str, str],
    config: Mapping[str, Any],
    cni_path: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any] | None:
    """Run ``plugin_type`` for ``command``; the parsed stdout for ADD and
    VERSION, None for the commands whose success prints nothing.

    ``env`` is the child's whole environment, with CNI_COMMAND replaced: pass
    the request's own (CniRequest.env), which is what the runtime gave us.

    Raises CniError: the delegate's own code and message (prefixed with its
    name) when it reports one, 11 on timeout, 999 when its output is not CNI.
    """
    executable = find_plugin(plugin_type, cni_path)
    child_env = dict(env)
    child_env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run(
            [executable],
            input=json.dumps(config).encode(),
            env=child_env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        _pass_through_stderr(err.stderr)
        raise CniError(
            TRY_AGAIN_LATER,
            f"{plugin_type}: {command} did not finish within {timeout:g} s",
        ) from None
    except OSError as err:
        raise CniError(INTERNAL, f"{plugin_type}: cannot execute {executable}: {err}") from None
    # Captured rather than inherited so a silent failure can quote it, then
    # forwarded: the SPEC wants a delegate's stderr on ours.
    _pass_through_stderr(proc.stderr)
    return _interpret(plugin_type, command, proc)


def _pass_through_stderr(data: bytes | None) -> None:
    if data:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()


def _interpret(
    plugin_type: str, command: str, proc: subprocess.CompletedProcess[bytes]
) -> dict[str, Any] | None:
    stdout = proc.stdout.strip()
    parsed: object = None
    if stdout:
        try:
            parsed = json.loads(stdout)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict) and "code" in parsed:
        code = parsed.get("code")
        raise CniError(
            code if isinstance(code, int) and not isinstance(code, bool) and code > 0 else INTERNAL,
            f"{plugin_type}: {parsed.get('msg', '')}",
            str(parsed.get("details", "") or ""),
        )
    if proc.returncode != 0:
        raise CniError(
            INTERNAL,
            f"{plugin_type}: {command} failed with exit code {proc.returncode}",
            _silent_failure(proc),
        )
    if command not in ("ADD", "VERSION"):
        return None
    if not isinstance(parsed, dict):
        raise CniError(
            INTERNAL,
            f"{plugin_type}: {command} succeeded but printed no JSON object",
            stdout[:_STDERR_IN_MSG].decode(errors="replace"),
        )
    return parsed


def _silent_failure(proc: subprocess.CompletedProcess[bytes]) -> str:
    # libcni's pluginErr: with no parsable error on stdout, stderr is the only
    # clue the runtime will ever show.
    text = (proc.stdout.strip() or proc.stderr.strip())[:_STDERR_IN_MSG]
    return text.decode(errors="replace")


# ------------------------------------------------------------ IPAM helpers


def _ipam_type(config: Mapping[str, Any]) -> str:
    ipam = config.get("ipam")
    plugin_type = ipam.get("type") if isinstance(ipam, Mapping) else None
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CniError(INVALID_CONFIG, "ipam.type is missing: there is no IPAM plugin to run")
    return plugin_type


def _cni_path(env: Mapping[str, str], cni_path: str | None) -> str:
    return env.get("CNI_PATH", "") if cni_path is None else cni_path


def ipam_add(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    cni_path: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Result:
    """Allocate. The result has no interfaces and no ``ips[].interface``:
    the caller fills the indexes in."""
    plugin_type = _ipam_type(config)
    raw = run_plugin(plugin_type, "ADD", env, config, _cni_path(env, cni_path), timeout)
    version = config.get("cniVersion")
    try:
        return parse_result(raw, version if isinstance(version, str) else CURRENT_VERSION)
    except ResultFormatError as err:
        raise CniError(INTERNAL, f"{plugin_type}: ADD returned an invalid result: {err}") from None


def ipam_del(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    cni_path: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    run_plugin(_ipam_type(config), "DEL", env, config, _cni_path(env, cni_path), timeout)


def ipam_check(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    cni_path: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    run_plugin(_ipam_type(config), "CHECK", env, config, _cni_path(env, cni_path), timeout)


def plugin_versions(
    plugin_type: str,
    env: Mapping[str, str],
    cni_path: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[str, ...]:
    """The versions a plugin says it supports (its VERSION answer)."""
    answer = run_plugin(
        plugin_type, "VERSION", env, {"cniVersion": CURRENT_VERSION}, cni_path, timeout
    )
    versions = (answer or {}).get("supportedVersions")
    if not isinstance(versions, list):
        raise CniError(INTERNAL, f"{plugin_type}: VERSION answer has no supportedVersions list")
    return tuple(str(v) for v in versions)


def _speaks_1_1(plugin_type: str, env: Mapping[str, str], cni_path: str, timeout: float) -> bool:
    return "1.1.0" in plugin_versions(plugin_type, env, cni_path, timeout)


def ipam_gc(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    cni_path: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """Forward GC (the SPEC says we MUST; docs/contracts.md#cni-commands). Returns False, without running it, when
    the delegate predates 1.1.0 and so has no GC: such a plugin (host-local
    from plugins 1.1.1, say) answers "unknown CNI_COMMAND" or, lacking
    CNI_CONTAINERID, "missing containerID", and neither is a failure of ours.
    It cannot hold allocations made under a 1.1.0 config either: it refuses
    every command for a version it does not speak."""
    plugin_type = _ipam_type(config)
    path = _cni_path(env, cni_path)
    if not _speaks_1_1(plugin_type, env, path, timeout):
        return False
    run_plugin(plugin_type, "GC", env, config, path, timeout)
    return True


def ipam_status(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    cni_path: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """Forward STATUS (docs/contracts.md#cni-commands). Returns False when the delegate has no STATUS
    (pre-1.1.0), which the SPEC lets us read as available: a plugin must not
    rely on STATUS being called."""
    plugin_type = _ipam_type(config)
    path = _cni_path(env, cni_path)
    if not _speaks_1_1(plugin_type, env, path, timeout):
        return False
    run_plugin(plugin_type, "STATUS", env, config, path, timeout)
    return True
