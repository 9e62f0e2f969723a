"""The repository stands alone: nothing in it may point at documents a user of
the repository cannot see (a planning tree beside the checkout, its design
notes, its contract tables and their row tags). Interoperability facts live in
docs/contracts.md; references go there.

Every file git knows about (tracked, or new and not ignored) is scanned."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Spelled in pieces so this file does not match itself.
_SHARED = re.escape("/" + "shared" + "/")
_PLAN = "DESIGN"
FORBIDDEN: dict[str, re.Pattern[str]] = {
    # A planning tree beside the checkout, relative or absolute.
    "a path outside the repository": re.compile(r"(?:\.\.|\bwork)" + _SHARED),
    # The planning notes, by file name or as "<plan> §N".
    "the external design notes": re.compile(_PLAN + r"(?:\.md\b|\s*§)"),
    # Row tags of the external contract tables: one capital (A for Multus
    # annotations, C for CNI rules, M for Multus behaviour) and exactly two
    # digits, as a word of its own. Device names in tests use one digit
    # ("C0", "D5"); hex and register-like names sit inside longer words.
    "an external contract tag": re.compile(r"(?<![\w.:#])[ACM]\d{2}(?!\w|\.\d)"),
    # The external contract files themselves (docs/contracts.md is ours).
    "an external contract file": re.compile(r"(?<!docs/)\bcontracts/[\w-]+\.md"),
}
# A bare section sign names a section of nothing in particular. A section
# reference names its public spec just before the sign, as in
# "device-info spec v1.1.0, §4.1"; ours use docs/contracts.md anchors.
BARE_SECTION = re.compile(r"§\s*\d")
SPEC_BEFORE = re.compile(r"spec\b[^§]{0,12}$", re.I)


def repo_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def text_of(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:4096]:
        return None  # binary
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def findings(text: str) -> list[tuple[int, str, str]]:
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORBIDDEN.items():
            m = pattern.search(line)
            if m:
                found.append((lineno, what, m.group(0)))
        for m in BARE_SECTION.finditer(line):
            if not SPEC_BEFORE.search(line[: m.start()]):
                found.append((lineno, "a section reference without its document", m.group(0)))
    return found


def test_no_file_points_outside_the_repository() -> None:
    files = repo_files()
    assert len(files) > 50, "git ls-files found too little: is this a checkout?"
    problems = []
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        for lineno, what, hit in findings(text):
            problems.append(f"{path.relative_to(ROOT)}:{lineno}: {what}: {hit!r}")
    assert not problems, "references a user of the repository cannot follow:\n" + "\n".join(
        problems
    )


def test_contracts_doc_has_the_anchors_code_cites() -> None:
    """Every anchor of docs/contracts.md cited anywhere is a heading there."""
    doc = (ROOT / "docs" / "contracts.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+\s+(.+?)\s*$", doc, re.M)}
    cited: dict[str, str] = {}
    for path in repo_files():
        text = text_of(path)
        if text is None:
            continue
        for m in re.finditer(r"contracts\.md#([\w-]+)", text):
            cited.setdefault(m.group(1), str(path.relative_to(ROOT)))
    assert cited, "nothing cites docs/contracts.md"
    missing = {a: where for a, where in cited.items() if a not in anchors}
    assert not missing, f"anchors cited but not in docs/contracts.md: {missing}"


def _slug(heading: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# -- the patterns themselves: they catch what they must and nothing else ------

_C = "C" + "22"  # a contract tag, spelled in pieces
_S = "\u00a7"  # the section sign


@pytest.mark.parametrize(
    "line",
    [
        "see ../" + "shared/" + "contracts/" + "cni.md",
        "Written from /work/" + "shared/" + "contracts/" + "x.md",
        _PLAN + ".md is the plan",
        "as planned (" + _PLAN + f" {_S}5)",
        f"a second ADD is not allowed ({_C}).",
        f"# {_C}: plugins that keep state",
        "contract C6" + "0-C6" + "3:",
        "Multus network-status (A" + "05).",
        "# M0" + "2/M0" + "3: Multus writes top-level deviceID",
        "(contracts/" + "multinetworkpolicy.md c.1)",
        f"As planned ({_S}3), plus:",
        f"Departure from {_S}8: the key",
    ],
)
def test_patterns_catch(line: str) -> None:
    assert findings(line), line


@pytest.mark.parametrize(
    "line",
    [
        "see docs/contracts.md#cni-errors",
        '(ALL, "", 7, "C0 D0 D1 D2 D3 D4 D5", "NUMA 0 too small")',
        "mac 02:AA:C1:22:33:44 and 0xC220 and 0xC" + "22",
        "deadbeefC22a and C223 and AC22",
        "device-info spec §4.1: <resourceName>-<deviceID>-device.json",
        "the CNI SPEC §4 says so",
        "docs/design.md keeps the design as built",
        "NVIDIA A100, Intel C741 chipset",
    ],
)
def test_patterns_spare(line: str) -> None:
    assert not findings(line), findings(line)
