"""Parse one manifest file (YAML or JSON) into the objects the policy engine
reads, normalised as the API server would store them, plus every problem found.

A file either parses (then each bad object is reported and skipped while the
rest flow) or is ``broken`` (undecodable, malformed YAML/JSON): the caller
decides what a broken file means; see ``directory.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .kinds import DEFAULT_NAMESPACE, KINDS, RESOURCES, ObjectKey, describe
from .source import SourceProblem

# The libyaml-backed loader is ~10x faster when PyYAML was built with it.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

JSON_SUFFIXES = frozenset({".json"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
SUFFIXES = JSON_SUFFIXES | YAML_SUFFIXES


@dataclass(frozen=True)
class Manifest:
    key: ObjectKey
    obj: dict[str, Any]
    line: int | None


# Limits on one manifest file, so that a huge or generated file cannot take
# the agent's memory or flood `nicwardenctl policies`: larger files, or files
# with more documents, are refused with a problem naming the limit, and only
# the first problems of a file are kept, with a count of the rest.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DOCUMENTS = 1000
MAX_PROBLEMS = 20


@dataclass
class ParsedFile:
    objects: list[Manifest] = field(default_factory=list)
    problems: list[SourceProblem] = field(default_factory=list)
    broken: bool = False
    dropped: int = 0  # problems beyond MAX_PROBLEMS, only counted

    def add(self, problem: SourceProblem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.dropped += 1


def summarise(problems: list[SourceProblem], file: str, dropped: int = 0) -> list[SourceProblem]:
    """The first ``MAX_PROBLEMS`` problems, plus one naming how many more."""
    more = dropped + max(0, len(problems) - MAX_PROBLEMS)
    kept = problems[:MAX_PROBLEMS]
    if more:
        kept.append(
            SourceProblem(
                file, "", f"and {more:,} more problems (only the first {MAX_PROBLEMS} are listed)"
            )
        )
    return kept


def too_large(file: str, size: int) -> SourceProblem:
    return SourceProblem(
        file,
        "",
        f"{size:,} bytes is over the {MAX_FILE_BYTES // (1024 * 1024)} MiB limit for a manifest file",
    )


def parse_file(path: Path, data: bytes) -> ParsedFile:
    out = ParsedFile()
    name = str(path)
    if len(data) > MAX_FILE_BYTES:
        out.broken = True
        out.add(too_large(name, len(data)))
        return out
    try:
        # utf-8-sig: editors on some platforms prepend a BOM.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        out.broken = True
        out.add(SourceProblem(name, "", f"not UTF-8 text: {exc}"))
        return out
    try:
        documents = list(
            _capped(
                _json_documents(text) if path.suffix in JSON_SUFFIXES else _yaml_documents(text)
            )
        )
    except _TooManyDocuments:
        out.broken = True
        out.add(
            SourceProblem(
                name, "", f"more than {MAX_DOCUMENTS:,} documents, the limit for a manifest file"
            )
        )
        return out
    except json.JSONDecodeError as exc:
        out.broken = True
        out.add(SourceProblem(name, "", f"malformed JSON: {exc.msg}", exc.lineno))
        return out
    except yaml.MarkedYAMLError as exc:
        out.broken = True
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        line = mark.line + 1 if mark is not None else None
        out.add(SourceProblem(name, "", f"malformed YAML: {message}", line))
        return out
    except yaml.YAMLError as exc:
        out.broken = True
        out.add(SourceProblem(name, "", f"malformed YAML: {exc}"))
        return out
    for index, (doc, line, item_lines) in enumerate(documents, start=1):
        _add_document(out, name, index, doc, line, item_lines)
    return out


class _TooManyDocuments(Exception):
    pass


def _capped(documents: Iterator[_Document]) -> Iterator[_Document]:
    for index, document in enumerate(documents, start=1):
        if index > MAX_DOCUMENTS:
            raise _TooManyDocuments
        yield document


# A document: its data, its first line and, for list documents, each item's line.
_Document = tuple[Any, int | None, list[int]]


def _json_documents(text: str) -> Iterator[_Document]:
    # JSON files hold one value; parsing them as YAML would accept non-JSON
    # (YAML 1.1 quirks) and report errors in YAML terms.
    yield json.loads(text), 1, []


def _yaml_documents(text: str) -> Iterator[_Document]:
    # Compose nodes first (rather than safe_load_all) to know each document's
    # and each list item's line for problem reports.
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            yield loader.construct_document(node), node.start_mark.line + 1, _item_lines(node)
    finally:
        loader.dispose()


def _item_lines(node: yaml.Node) -> list[int]:
    if not isinstance(node, yaml.MappingNode):
        return []
    for key_node, value_node in node.value:
        if key_node.value == "items" and isinstance(value_node, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value_node.value]
    return []


def _add_document(
    out: ParsedFile, file: str, index: int, doc: Any, line: int | None, item_lines: list[int]
) -> None:
    if doc is None:
        return  # an empty document ("---" at the end of a file)
    if not isinstance(doc, Mapping):
        out.add(
            SourceProblem(file, f"document {index}", f"not an object ({type(doc).__name__})", line)
        )
        return
    kind = doc.get("kind")
    items = doc.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        # "kind: List" (kubectl get -o yaml) names each item's kind; typed
        # lists ("PodList", the API's list responses) leave it implicit.
        item_kind = kind[: -len("List")] or None
        item_version = doc.get("apiVersion") if item_kind else None
        for i, item in enumerate(items):
            item_line = item_lines[i] if i < len(item_lines) else line
            where = f"document {index} items[{i}]"
            if isinstance(item, dict) and item_kind is not None:
                item.setdefault("kind", item_kind)
                item.setdefault("apiVersion", item_version)
            _add_object(out, file, where, item, item_line)
        return
    _add_object(out, file, f"document {index}", doc, line)


def _add_object(out: ParsedFile, file: str, where: str, raw: Any, line: int | None) -> None:
    def problem(subject: str, message: str) -> None:
        out.add(SourceProblem(file, subject, message, line))

    if not isinstance(raw, dict):
        problem(where, f"not an object ({type(raw).__name__})")
        return
    raw_kind = raw.get("kind")
    resource = RESOURCES.get(raw_kind) if isinstance(raw_kind, str) else None
    if resource is None:
        problem(where, f"unsupported kind {raw_kind!r} (want one of {', '.join(KINDS)})")
        return
    kind = resource.kind
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(name, str) or not name:
        problem(f"{kind} ({where})", "metadata.name missing or not a string")
        return
    namespace = meta.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        problem(
            f"{kind} {name}", f"metadata.namespace must be a non-empty string, got {namespace!r}"
        )
        return
    if resource.namespaced:
        # The API server fills this in from the request; manifests usually omit it.
        namespace = namespace or DEFAULT_NAMESPACE
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)  # the API server ignores it for cluster-scoped kinds
        namespace = ""
    key: ObjectKey = (kind, namespace, name)
    if raw.get("apiVersion") != resource.api_version:
        problem(
            describe(key),
            f"apiVersion {raw.get('apiVersion')!r} is not served for {kind} "
            f"(want {resource.api_version!r})",
        )
        return
    out.objects.append(Manifest(key, raw, line))
