"""The shim's config scanner (cni/shim.c) against Python's json module: for
generated configs, valid and broken, it must accept exactly what json.loads
accepts and extract the same top-level agentSocket and cniVersion.

The scanner is built with its test main() (-DNICWARDEN_SCAN_MAIN), which reads
length-prefixed configs and prints one JSON line each, so one process checks a
whole batch."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cni_runtime import build_scan_harness

KEYS = ("agentSocket", "cniVersion")
# What the Python shim searched a broken config for, to label its error.
VERSION_PATTERN = re.compile(r'"cniVersion"\s*:\s*"([^"\\]*)"')


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scan_harness(tmp_path_factory.mktemp("scan") / "scan")


def scan(harness: Path, configs: list[bytes]) -> list[dict[str, Any]]:
    data = b"".join(b"%d\n%s" % (len(c), c) for c in configs)
    proc = subprocess.run([str(harness)], input=data, capture_output=True, check=True, timeout=60)
    lines = proc.stdout.decode("ascii").splitlines()
    assert len(lines) == len(configs)
    return [json.loads(line) for line in lines]


def expected(config: bytes) -> dict[str, Any]:
    """What the scanner must report, from Python's own decoder."""
    out: dict[str, Any] = {"ok": False}
    try:
        obj = json.loads(config.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is one
        pass
    else:
        out["ok"] = True
        if isinstance(obj, dict):
            for key in KEYS:
                if key in obj:
                    v = obj[key]
                    out[key] = (
                        ["string", v]
                        if isinstance(v, str)
                        else ["null"]
                        if v is None
                        else ["other"]
                    )
    match = VERSION_PATTERN.search(config.decode("utf-8", "replace"))
    if match:
        out["fallbackVersion"] = match.group(1)
    return out


def check(harness: Path, configs: list[bytes]) -> None:
    for config, got in zip(configs, scan(harness, configs), strict=True):
        assert got == expected(config), config


# ---------------------------------------------------------------- generation
# A seeded generator, not Hypothesis: thousands of configs go through one
# harness process in about a second. NICWARDEN_FUZZ=long runs 20 times more.

ROUNDS = 20 if os.environ.get("NICWARDEN_FUZZ") == "long" else 1
# Characters that stress escaping: quotes, backslashes, controls, DEL,
# non-ASCII, astral and surrogate code points (json allows lone ones as \u).
SPECIAL = '"\\/\b\f\n\r\t\x00\x1f\x7f\x80\xe9\u20ac\ud800\udc00\U0001f600 :,{}[]'
KEY_NAMES = [*KEYS, "cniversion", "agentSocket ", "name", ""]


def gen_text(r: random.Random) -> str:
    return "".join(
        r.choice(SPECIAL) if r.random() < 0.5 else chr(r.randrange(0x20, 0x7F))
        for _ in range(r.randrange(8))
    )


def gen_key(r: random.Random) -> str:
    return r.choice(KEY_NAMES) if r.random() < 0.6 else gen_text(r)


def gen_scalar(r: random.Random) -> Any:
    return r.choice(
        [
            None,
            True,
            False,
            r.randrange(-(10**20), 10**20),
            r.uniform(-1e6, 1e6),
            r.choice([float("nan"), float("inf"), float("-inf"), 1e300, -0.0, 5e-324]),
            gen_text(r),
            r.choice(["0.3.1", "0.4.0", "1.0.0", "1.1.0", "/run/nicwarden/cni.sock"]),
        ]
    )


def ws(r: random.Random) -> str:
    return "".join(r.choice(" \t\n\r") for _ in range(r.choice([0, 0, 0, 1, 3])))


def render_key(r: random.Random, name: str) -> str:
    if name and r.random() < 0.3:
        # The key spelled with \u escapes where the coin says so.
        return (
            '"'
            + "".join(f"\\u{ord(c):04x}" if r.random() < 0.5 else json.dumps(c)[1:-1] for c in name)
            + '"'
        )
    return json.dumps(name, ensure_ascii=r.random() < 0.5)


def render(r: random.Random, depth: int = 0) -> str:
    """JSON text with random whitespace, key spellings and duplicate keys."""
    roll = r.random() if depth < 5 else 1.0
    if roll < 0.35 or depth == 0:
        items = [
            f"{ws(r)}{render_key(r, gen_key(r))}{ws(r)}:{ws(r)}{render(r, depth + 1)}{ws(r)}"
            for _ in range(r.randrange(6 if depth == 0 else 4))
        ]
        return ws(r) + "{" + ",".join(items) + "}" + ws(r)
    if roll < 0.5:
        items = [ws(r) + render(r, depth + 1) + ws(r) for _ in range(r.randrange(4))]
        return "[" + ",".join(items) + "]"
    return json.dumps(gen_scalar(r), ensure_ascii=r.random() < 0.5)


def utf8(text: str) -> bytes | None:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a raw lone surrogate: not a UTF-8 input
        return None


def break_(r: random.Random, data: bytes) -> bytes:
    """One edit: bytes cut, inserted or replaced, or the tail dropped."""
    at = r.randrange(len(data) + 1)
    noise = r.choice(
        [b'"', b"\\", b",", b"}", b"]", b":", b"0", b"\xff", b"\xc3", bytes([r.randrange(256)])]
    )
    edit = r.randrange(4)
    if edit == 0:
        return data[:at]
    if edit == 1:
        return data[:at] + data[at + len(noise) :]
    if edit == 2:
        return data[:at] + noise + data[at:]
    return data[:at] + noise + data[at + len(noise) :]


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_generated_configs_scan_like_python(harness: Path, seed: int) -> None:
    r = random.Random(seed)
    configs = [c for c in (utf8(render(r)) for _ in range(2000)) if c is not None]
    assert len(configs) > 1000
    check(harness, configs)
    # The generator did reach what the scanner looks for.
    found = [scan_one for scan_one in scan(harness, configs) if "agentSocket" in scan_one]
    assert len(found) > 50


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_broken_configs_are_refused_like_python(harness: Path, seed: int) -> None:
    r = random.Random(1000 + seed)
    configs = [break_(r, c) for c in (utf8(render(r)) for _ in range(2000)) if c]
    check(harness, configs)
    assert sum(not expected(c)["ok"] for c in configs) > 500


@pytest.mark.parametrize(
    "config",
    [
        b"",
        b" ",
        b"{}",
        b"[]",
        b"0",
        b"-0",
        b"-",
        b"1.",
        b"1.5e",
        b"1e+",
        b"1E-7",
        b".5",
        b"01",
        b"-01",
        b"NaN",
        b"-NaN",
        b"Infinity",
        b"-Infinity",
        b"infinity",
        b"nul",
        b"truex",
        b'"\\u12"',
        b'"\\u12G4"',
        b'"\\ud800"',
        b'"\\ud83d\\ude00"',
        b'"\\U0041"',
        b'"\x7f"',
        b'"\x1f"',
        b'{"agentSocket":"/a","agentSocket":null}',
        b'{"agentSocket":null,"agentSocket":"/a"}',
        b'{"agentSocket":{"agentSocket":"/x"}}',
        b'[{"agentSocket":"/x"}]',
        b'{"agentSocket":"\\ud800"}',
        b'{"cniVersion":"1.0.0\\u0000"}',
        b'{"cniVersion" : "0.4.0" , }',
        b'{"cniVersion":"0.4.0"}{',
        b'{"cniVersion"\t:\n"0.4.0" x',
        b'{"cniVersion": "a\\"b"} x',
        b'{"cniVersion": "x", "cniVersion": "0.4.0" oops',
        b"\xef\xbb\xbf{}",
        b'{"a":"\xe2\x82"}',
        b'{"a":"\xf4\x90\x80\x80"}',
        b"[" * 400 + b"]" * 400,
        b"[" * 600 + b"]" * 600,
        b'{"a":' * 300 + b"1" + b"}" * 300,
        b'{"a" 1}',
        b"{1: 2}",
        b'{"a": 1 "b": 2}',
        b"[1 2]",
    ],
)
def test_edge_cases_scan_like_python(harness: Path, config: bytes) -> None:
    got = scan(harness, [config])[0]
    if config.startswith(b"[" * 600):
        # Deeper than the scanner's 512 levels: refused (Python's json goes
        # on until its recursion limit, near 1000).
        assert got == {"ok": False}
        return
    assert got == expected(config)
