"""docs/ (the operator docs: install, configuration, upgrade, uninstall,
troubleshooting) stay true to the code: the settings table is generated from
the config schema, every command line they show parses with the real CLI
parsers, every config snippet validates, every link and deploy/ path exists,
and the "not yet" notes disappear when the code catches up."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from nicwarden.agent import ctl, daemon
from nicwarden.agent.config import AgentConfig, load_config, settings_reference, to_plain_dict
from nicwarden.agent.devices.spec import parse_sriov
from nicwarden.agent.errors import ConfigError
from nicwarden.deviceplugin.config import parse_resource_list

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# docs/design.md belongs to the design notes, not to these operator docs.
OPERATOR_DOCS = [
    "install.md",
    "configuration.md",
    "upgrade.md",
    "uninstall.md",
    "troubleshooting.md",
    "dra.md",
]


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def all_docs() -> Iterator[tuple[str, str]]:
    for name in OPERATOR_DOCS:
        yield name, doc(name)


def gen_config_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_doc", REPO / "deploy" / "gen_config_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- markdown pieces ------------------------------------------------------------

# Fences may be indented (code blocks inside list items).
_FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.M | re.S)
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def code_blocks(text: str) -> list[tuple[str, str]]:
    return [(m[1], textwrap.dedent(m[2])) for m in _FENCE.finditer(text)]


def code_spans(text: str) -> list[str]:
    return _SPAN.findall(_FENCE.sub("", text))


def command_lines(text: str) -> Iterator[str]:
    """Shell lines from code blocks (continuations joined) and code spans."""
    for _, body in code_blocks(text):
        yield from body.replace("\\\n", " ").splitlines()
    yield from code_spans(text)


def invocations(text: str, program: str) -> Iterator[list[str]]:
    """The argument lists given to ``program`` in the doc's commands."""
    pattern = re.compile(rf"(?:^|[\s(]){re.escape(program)}\s+(.*)")
    for line in command_lines(text):
        match = pattern.search(line)
        if not match:
            continue
        rest = re.split(r"\s(?:\||;|&&|#)|\)", match[1])[0]
        if "$" in rest or "..." in rest:
            continue  # a shell function or an elided example: nothing fixed to check
        # A <placeholder> stands for a value: "1" suits names and numbers alike.
        yield ["1" if re.fullmatch(r"<[^>]+>", t) else t for t in shlex.split(rest)]


# -- the settings table -----------------------------------------------------------


def test_settings_table_is_generated_from_the_code() -> None:
    gen = gen_config_doc()
    text = doc("configuration.md")
    assert gen.update(text) == text, "docs/configuration.md is stale: run deploy/gen_config_doc.py"
    assert gen.main(["--check"]) == 0


def test_configuration_doc_mentions_every_key() -> None:
    text = doc("configuration.md")
    for row in settings_reference(AgentConfig):
        assert f"`{row.key}`" in text, row.key
    for key in to_plain_dict(AgentConfig()):
        assert f"`{key}" in text, key


def test_generated_table_renders_defaults_as_yaml() -> None:
    gen = gen_config_doc()
    assert gen.render_default(None) == "`null`"
    assert gen.render_default(True) == "`true`"
    assert gen.render_default(30.0) == "`30`"
    assert gen.render_default([]) == "`[]`"
    assert gen.render_default("/run/x") == "`/run/x`"
    assert gen.flag_overrides()["metrics.port"] == ["--metrics-port"]


# -- command lines ---------------------------------------------------------------------


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No abbreviated options (`--dev` for `--devices`): docs spell them out."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def test_nicwardenctl_command_lines_parse() -> None:
    parser = _strict(ctl.build_parser())
    seen = set()
    for name, text in all_docs():
        for argv in invocations(text, "nicwardenctl"):
            try:
                args = parser.parse_args(argv)
            except SystemExit as e:
                pytest.fail(f"{name}: `nicwardenctl {shlex.join(argv)}` does not parse ({e})")
            seen.add(args.command)
    # The docs walk through at least these.
    assert {"health", "devices", "pools", "attachments", "reconcile"} <= seen


def test_nicwarden_agent_command_lines_parse() -> None:
    parser = _strict(daemon.build_parser())
    for name, text in all_docs():
        for argv in invocations(text, "nicwarden-agent"):
            try:
                parser.parse_args(argv)
            except SystemExit as e:
                if e.code not in (0, None):
                    pytest.fail(f"{name}: `nicwarden-agent {shlex.join(argv)}` does not parse")


def test_invocation_scanner_finds_commands() -> None:
    text = "```sh\nkubectl exec $POD -- nicwardenctl -o json pools \\\n  --devices\n```\n"
    text += "and `nicwardenctl attachment <container-id>` inline"
    assert list(invocations(text, "nicwardenctl")) == [
        ["-o", "json", "pools", "--devices"],
        ["attachment", "1"],
    ]


def _daemonsets() -> dict[str, dict[str, Any]]:
    out = {}
    for path in (REPO / "deploy").rglob("*.yaml"):
        for body in yaml.safe_load_all(path.read_text()):
            if body and body.get("kind") == "DaemonSet":
                out[body["metadata"]["name"]] = body
    return out


def test_kubectl_lines_name_real_objects() -> None:
    """`ds/<name>`, `-c <container>` and `-l <labels>` in the docs' kubectl
    commands match deploy/."""
    daemonsets = _daemonsets()
    agent = daemonsets["nicwarden"]["spec"]["template"]
    containers = {
        c["name"] for c in [*agent["spec"]["initContainers"], *agent["spec"]["containers"]]
    }
    labels = agent["metadata"]["labels"]
    for name, text in all_docs():
        for line in command_lines(text):
            if "kubectl" not in line or "nicwarden" not in line:
                continue
            for ds in re.findall(r"\bds/([\w-]+)", line):
                assert ds in daemonsets, f"{name}: no DaemonSet {ds}"
            for container in re.findall(r"\s-c\s+([\w-]+)", line):
                assert container in containers, f"{name}: no container {container}"
            for selector in re.findall(r"\s-l\s+(\S+=\S+)", line):  # not `ls -l`
                pairs = dict(kv.split("=", 1) for kv in selector.split(","))
                assert pairs.items() <= labels.items(), f"{name}: {selector} selects no agent"


# -- config snippets --------------------------------------------------------------------

TOP_LEVEL = set(to_plain_dict(AgentConfig()))


def _load(raw: dict[str, Any]) -> AgentConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(path, {})


def test_yaml_config_snippets_validate() -> None:
    checked = 0
    for name, text in all_docs():
        for lang, body in code_blocks(text):
            if lang != "yaml":
                continue
            raw = yaml.safe_load(body)
            if not isinstance(raw, dict) or not set(raw) <= TOP_LEVEL:
                continue
            cfg = _load(raw)
            parsed = parse_resource_list(cfg.resource_list, cfg.resource_prefix)
            assert parsed.errors == (), (name, [str(e) for e in parsed.errors])
            parse_sriov(cfg.sriov, name)
            checked += 1
    assert checked >= 4


_INLINE_SETTING = re.compile(r"([a-z][A-Za-z]*(?:\.[a-z][A-Za-z]*)*): (\S.*)")


def test_inline_settings_validate() -> None:
    """`policy.enabled: false` and the like, written in running text."""
    checked = 0
    for name, text in all_docs():
        for span in code_spans(text):
            match = _INLINE_SETTING.fullmatch(span)
            if not match or match[1].split(".")[0] not in TOP_LEVEL:
                continue
            try:
                load_config(None, {match[1]: yaml.safe_load(match[2])})
            except ConfigError as e:
                pytest.fail(f"{name}: `{span}` is not a valid setting: {e}")
            checked += 1
    assert checked >= 3


def test_config_check_recipe_accepts_the_shipped_config(tmp_path: Path) -> None:
    """The "check a file before rolling it out" recipe runs as written."""
    block = next(body for _, body in code_blocks(doc("configuration.md")) if "<<'EOF'" in body)
    script = block.split("\n", 1)[1].rsplit("EOF", 1)[0]
    cm = yaml.safe_load((REPO / "deploy" / "configmap.yaml").read_text())
    config = tmp_path / "config.yaml"
    config.write_text(cm["data"]["config.yaml"])
    out = subprocess.run(
        [sys.executable, "-", str(config)], input=script, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    config.write_text("sriov:\n  - numVfs: 4\n")
    out = subprocess.run(
        [sys.executable, "-", str(config)], input=script, capture_output=True, text=True
    )
    assert out.returncode != 0 and "needs a selector" in out.stderr


# -- links and paths --------------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", _FENCE.sub("", text), re.M)}


def test_links_resolve() -> None:
    for name, text in all_docs():
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            path = (DOCS / file_part).resolve() if file_part else DOCS / name
            assert path.exists(), f"{name}: broken link {target}"
            if anchor:
                assert anchor in _anchors(path.read_text()), f"{name}: no anchor {target}"


def test_deploy_paths_mentioned_exist() -> None:
    for name, text in all_docs():
        for ref in re.findall(r"\bdeploy/[\w./-]*", text):
            ref = ref.rstrip(".")
            assert (REPO / ref).exists(), f"{name}: {ref} does not exist"


# -- content the brief asks for ----------------------------------------------------------


def test_uninstall_order() -> None:
    headings = re.findall(r"^## (.*)$", doc("uninstall.md"), re.M)
    order = [
        next(i for i, h in enumerate(headings) if word in h.lower())
        for word in ("stop new", "remove the pods", "shim", "delete the agent")
    ]
    assert order == sorted(order), headings


def test_troubleshooting_covers_the_known_failures() -> None:
    headings = " | ".join(re.findall(r"^## (.*)$", doc("troubleshooting.md"), re.M)).lower()
    for topic in (
        "error 11",
        "not advertised",
        "dead netns",
        "not enforced",
        "iommu",
        "kubelet restarted",
    ):
        assert topic in headings, topic


# -- "not yet" notes track the code ----------------------------------------------------------

_STATUS = re.compile(r"<!-- status:([\w-]+) -->(.*?)<!-- /status -->", re.S)


def _agent_code_matches(pattern: str, exclude: tuple[str, ...]) -> bool:
    regex = re.compile(pattern)
    for root in ("agent", "cni", "deviceplugin"):
        for path in (REPO / root).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(exclude):
                continue
            if regex.search(path.read_text(encoding="utf-8")):
                return True
    return False


# Each note says a feature is missing: name -> does the code have it now?
FEATURES = {
    # The daemon runs the sriov plan/converge loop.
    "sriov-provisioning": lambda: _agent_code_matches(r"\bconverge\(", ("agent/devices/",)),
    # The daemon starts the Kubernetes API source.
    "api-watch": lambda: _agent_code_matches(r"\bApiSource\(", ("agent/k8s/",)),
}


def test_status_notes_match_the_code() -> None:
    notes: dict[str, str] = {}
    for name, text in all_docs():
        for match in _STATUS.finditer(text):
            assert match[1] in FEATURES, f"{name}: unknown status note {match[1]}"
            notes[match[1]] = name
    for feature, present in FEATURES.items():
        implemented = present()
        if implemented:
            assert feature not in notes, (
                f"{notes.get(feature)}: the code now does {feature!r}; update the docs"
                " and remove its status note"
            )
        else:
            assert feature in notes, f"the docs must say that {feature!r} is not done yet"
