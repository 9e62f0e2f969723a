"""deploy/Dockerfile, checked by reading it (tests/e2e/test_image.py builds
and runs it): the base as a build argument defaulting to Debian 12, a build
stage that compiles the static shim and installs the package non-editable
into a venv that sees Debian's bcc, a final stage with the run-time packages
and no compiler, that every COPY source exists and together they are what the
distribution is built from, and an entrypoint that is one of our console
scripts."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import yaml

from nicwarden.agent import daemon

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuations joined, comments out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage (a FROM starts one); ARGs before the first FROM
    are stage 0's preamble and not part of any stage."""
    out: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def args_of(name: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
    source = instructions() if stage is None else stage
    return [rest for word, rest in source if word == name]


def final() -> list[tuple[str, str]]:
    return stages()[-1]


def build_stage() -> list[tuple[str, str]]:
    (build,) = [s for s in stages()[:-1] if s[0][1].split()[-1] == "build"]
    return build


def apt_packages(stage: list[tuple[str, str]]) -> set[str]:
    runs = " ".join(args_of("RUN", stage))
    match = re.search(r"apt-get install ([^&]*)", runs)
    assert match, "no apt-get install"
    assert "apt-get update" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs  # no package lists in the layer
    return {w for w in match[1].split() if not w.startswith("-")}


COMPILERS = {
    "gcc",
    "g++",
    "cpp",
    "clang",
    "musl-tools",
    "build-essential",
    "libc6-dev",
    "binutils",
    "make",
    "python3-dev",
}


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_instructions_are_known() -> None:
    known = {"FROM", "ARG", "RUN", "WORKDIR", "COPY", "ENV", "ENTRYPOINT", "CMD", "LABEL"}
    words = [w for w, _ in instructions()]
    assert set(words) <= known, set(words) - known
    assert words[0] in ("FROM", "ARG")
    assert words.count("ENTRYPOINT") == 1 and words.count("CMD") <= 1


def test_base_is_a_build_argument_defaulting_to_debian_12() -> None:
    words = instructions()
    assert words[0][0] == "ARG"
    name, _, default = words[0][1].partition("=")
    assert name == "BASE"
    assert re.fullmatch(r"debian:(12|bookworm)(-slim)?(@sha256:[0-9a-f]{64})?", default), default
    for base in args_of("FROM"):
        assert base.split()[0] == "${BASE}", base
    assert len(stages()) == 2


def test_build_stage_compiles_the_static_shim() -> None:
    build = build_stage()
    assert {"gcc", "musl-tools", "python3", "python3-venv"} <= apt_packages(build)
    assert "scripts/build-shim scripts/" in args_of("COPY", build)
    runs = " ".join(args_of("RUN", build))
    # The development build script (static, libc only), into the venv's bin/,
    # where `nicwardenctl install-cni` looks for it.
    compile_ = re.search(r"scripts/build-shim (\S+)", runs)
    assert compile_, "the shim is compiled in the build stage"
    assert compile_[1] == "/opt/nicwarden/bin/nicwarden-cni"
    assert "-static" in (REPO / "scripts" / "build-shim").read_text()
    # After the package install, so nothing the install does can replace it.
    assert compile_.start() > runs.index("pip install --no-cache-dir --no-deps")


def test_final_stage_installs_what_the_agent_needs_and_no_compiler() -> None:
    packages = apt_packages(final())
    assert {"python3", "python3-bpfcc", "iproute2", "kmod", "ca-certificates"} <= packages
    assert not packages & COMPILERS, packages & COMPILERS
    # Nothing from the build context: only the build stage's venv and shim.
    for rest in args_of("COPY", final()):
        assert rest.startswith("--from=build "), rest
    runs = " ".join(args_of("RUN", final()))
    assert "! command -v gcc" in runs and "! command -v cc" in runs


def _setup_roots() -> tuple[str, ...]:
    """ROOTS from setup.py, read without running it (it calls setup())."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "ROOTS" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple)
            return value
    raise AssertionError("setup.py has no ROOTS")


def copy_sources() -> list[str]:
    """Sources of every COPY from the build context (not from a stage)."""
    sources = []
    for rest in args_of("COPY"):
        if rest.startswith("--from="):
            continue
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        sources += words[:-1]
    return sources


def test_every_copy_source_exists_in_the_build_context() -> None:
    # The build context is the repository root (see the Dockerfile's header).
    assert "docker build -f deploy/Dockerfile" in DOCKERFILE.read_text()
    for source in copy_sources():
        assert (REPO / source).exists(), source


def test_copies_are_what_the_distribution_is_built_from() -> None:
    copied = {s.rstrip("/") for s in copy_sources()}
    needed = {"pyproject.toml", "setup.py", PYPROJECT["project"]["readme"], *_setup_roots()}
    assert needed <= copied, needed - copied
    # Package data (the BPF C sources, the .proto files) travel with their folders.
    assert "bpf" in copied and "proto" in copied


def test_dockerignore_keeps_the_copied_sources() -> None:
    patterns = [
        line.strip()
        for line in (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copy_sources():
        for pattern in patterns:
            assert not fnmatch.fnmatch(source.rstrip("/"), pattern), (source, pattern)
    assert ".venv" in patterns and "**/__pycache__" in patterns


def test_venv_sees_debian_bcc_and_install_is_not_editable() -> None:
    runs = " ".join(args_of("RUN", build_stage()))
    match = re.search(r"python3 -m venv (--system-site-packages) (\S+)", runs)
    assert match, "the venv must be made with --system-site-packages (bcc is Debian's)"
    venv = match[2]
    install = re.search(rf"{re.escape(venv)}/bin/pip install ([^&]*) /src", runs)
    assert install, "pip install of the package into the venv"
    words = install[1].split()
    assert "-e" not in words and "--editable" not in words
    # The venv moves to the final stage at the same path (its scripts name it).
    assert f"--from=build {venv} {venv}" in args_of("COPY", final())
    env = " ".join(args_of("ENV", final()))
    assert f"PATH={venv}/bin:$PATH" in env


def test_build_image_script_passes_a_local_base() -> None:
    script = (REPO / "scripts" / "build-image").read_text()
    assert "debootstrap" in script
    assert '--build-arg "BASE=$base"' in script
    assert '-f "$here/deploy/Dockerfile"' in script
    assert "deploy/Dockerfile.dockerignore" in script


def test_entrypoint_is_the_agent_console_script() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    (entrypoint,) = [exec_form(r) for r in args_of("ENTRYPOINT")]
    assert entrypoint == ["nicwarden-agent"]
    assert scripts[entrypoint[0]] == "nicwarden.agent.daemon:main"
    (cmd,) = [exec_form(r) for r in args_of("CMD")]
    args = daemon.build_parser().parse_args(cmd)
    assert str(args.config) == "/etc/nicwarden/config.yaml"


def test_manifest_commands_are_console_scripts_of_the_image() -> None:
    scripts = set(PYPROJECT["project"]["scripts"])
    builtins = {"rm", "sleep", "/bin/sh"}  # coreutils and dash in debian:12-slim
    for path in sorted((REPO / "deploy").rglob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if not body or body.get("kind") != "DaemonSet":
                continue
            spec = body["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                for argv in (
                    c.get("command"),
                    c.get("livenessProbe", {}).get("exec", {}).get("command"),
                    c.get("readinessProbe", {}).get("exec", {}).get("command"),
                    c.get("startupProbe", {}).get("exec", {}).get("command"),
                ):
                    if argv:
                        assert argv[0] in scripts | builtins, (path.name, c["name"], argv[0])


def test_build_smoke_checks_the_installed_commands() -> None:
    runs = " ".join(args_of("RUN", final()))
    assert "import bcc" in runs  # bcc is seen through the venv
    for script in PYPROJECT["project"]["scripts"]:
        if script != "nicwarden-cni":  # the shim is checked with CNI_COMMAND=VERSION
            assert script in runs, script
    assert "CNI_COMMAND=VERSION /opt/nicwarden/bin/nicwarden-cni" in runs
