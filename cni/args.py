"""``CNI_ARGS`` (``K=V;K=V``), parsed the way Kubernetes runtimes and Multus
write it."""

from __future__ import annotations

from dataclasses import dataclass, field

from nicwarden.cni.errors import INVALID_ENVIRONMENT, CniError


@dataclass(frozen=True)
class CniArgs:
    values: dict[str, str] = field(default_factory=dict)

    @property
    def ignore_unknown(self) -> bool:
        return self.values.get("IgnoreUnknown", "").lower() in ("1", "true")

    @property
    def pod_namespace(self) -> str | None:
        return self.values.get("K8S_POD_NAMESPACE") or None

    @property
    def pod_name(self) -> str | None:
        return self.values.get("K8S_POD_NAME") or None

    @property
    def pod_infra_container_id(self) -> str | None:
        return self.values.get("K8S_POD_INFRA_CONTAINER_ID") or None

    @property
    def pod_uid(self) -> str | None:
        return self.values.get("K8S_POD_UID") or None


def parse_cni_args(raw: str) -> CniArgs:
    """Lenient where the ecosystem is loose, strict where libcni is.

    Values may contain ``=`` (split on the first one only); Multus thin mode can
    repeat keys, and the later one wins because Multus appends its own after the
    runtime's. Unknown keys are always accepted: we never reject on them, so
    ``IgnoreUnknown`` is only recorded. Empty segments (a trailing ``;``) are
    skipped. A non-empty segment without ``=`` or with an empty key is
    rejected, as libcni's ``LoadArgs`` does, because it means the string is not
    ``K=V`` pairs at all.
    """
    values: dict[str, str] = {}
    for segment in raw.split(";"):
        if not segment.strip():
            continue
        key, sep, value = segment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_ARGS: invalid pair {segment!r}: expected KEY=VALUE",
            )
        values[key] = value
    return CniArgs(values)
