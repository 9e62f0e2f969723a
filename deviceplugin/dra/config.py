"""The ``dra:`` config section: which VFs Dynamic Resource Allocation offers,
under which driver name, and where kubelet and the container runtime look.

VFs are chosen in the same selector language as the device plugin's
``resourceList`` (the parser and matcher are shared, not copied).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from nicwarden.agent.schema import (
    NO_VALUE,
    Invalid,
    Problem,
    Problems,
    boolean,
    describe,
    path,
    setting,
)
from nicwarden.deviceplugin.config import Selector, parse_selectors

DEFAULT_REGISTRY_DIR = Path("/var/lib/kubelet/plugins_registry")
DEFAULT_PLUGINS_DIR = Path("/var/lib/kubelet/plugins")
DEFAULT_CDI_DIR = Path("/var/run/cdi")

# kubelet's DriverNameMaxLength: the name is a DNS subdomain, lower case, at
# most 63 characters (it is also the CDI vendor and part of socket names).
DRIVER_NAME_MAX = 63
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def driver_name(value: object) -> str:
    """A DRA driver name: a lower-case DNS subdomain of at most 63 characters."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a driver name such as vf.nicwarden.io, got {describe(value)}")
    if len(value) > DRIVER_NAME_MAX:
        raise Invalid(f"expected at most {DRIVER_NAME_MAX} characters, got {len(value)}")
    if not _SUBDOMAIN.fullmatch(value):
        raise Invalid(
            "expected a lower-case DNS subdomain (letters, digits, '-' and '.'),"
            f" such as vf.nicwarden.io, got {describe(value)}"
        )
    return value


def optional_driver_name(value: object) -> str | None:
    return None if value is None else driver_name(value)


def selector_list(value: object) -> object:
    """``selectors`` in the ``resourceList`` language (a list, or one object),
    validated and kept as written (so the effective config prints as YAML);
    :attr:`DraConfig.parsed_selectors` is the parsed form."""
    if value is None:
        return None
    problems = Problems()
    parse_selectors(value, problems)
    if problems:
        # parse_selectors files its problems under "selectors"; the schema
        # engine adds that key itself.
        raise Invalid(problems=[Problem(p.path[1:], _with_value(p)) for p in problems])
    return copy.deepcopy(value)


def _with_value(problem: Problem) -> str:
    if problem.value is NO_VALUE:
        return problem.reason
    return f"{problem.reason}, got {describe(problem.value)}"


@dataclass(frozen=True)
class DraConfig:
    enabled: bool = setting(
        boolean, False, "Offer the selected VFs through Dynamic Resource Allocation (needs driver)."
    )
    driver: str | None = setting(
        optional_driver_name,
        None,
        "DRA driver name: a lower-case DNS subdomain of at most 63 characters you own,"
        " e.g. vf.nicwarden.io.",
    )
    selectors: object = setting(
        selector_list,
        None,
        "VFs DRA offers, in the resourceList selector language; unset: every VF."
        " A VF may not also be in a device plugin pool.",
    )
    registry_dir: Path = setting(
        path, DEFAULT_REGISTRY_DIR, "Kubelet's plugin registration directory."
    )
    plugins_dir: Path = setting(
        path, DEFAULT_PLUGINS_DIR, "Kubelet's plugins directory (the DRA socket goes in <driver>/)."
    )
    cdi_dir: Path = setting(path, DEFAULT_CDI_DIR, "Where per-claim CDI spec files are written.")

    def check(self) -> None:
        if self.enabled and self.driver is None:
            raise Invalid(
                problems=[Problem(("driver",), "required when enabled (e.g. vf.nicwarden.io)")]
            )

    @property
    def active(self) -> bool:
        """Configured to offer VFs: enabled with a driver name."""
        return self.enabled and self.driver is not None

    @cached_property
    def parsed_selectors(self) -> tuple[Selector, ...]:
        if self.selectors is None:
            return (Selector(),)
        problems = Problems()
        parsed = parse_selectors(self.selectors, problems)
        if problems:  # only a DraConfig built by hand, bypassing validation
            raise ValueError("; ".join(p.reason for p in problems))
        return parsed

    @property
    def effective_selectors(self) -> tuple[Selector, ...]:
        """The selectors to match: no ``selectors`` key means every VF."""
        return self.parsed_selectors

    @property
    def driver_name(self) -> str:
        if self.driver is None:
            raise ValueError("dra.driver is not set")
        return self.driver

    @property
    def socket_dir(self) -> Path:
        """The plugin's own directory under the plugins dir (never shared)."""
        return self.plugins_dir / self.driver_name

    @property
    def dra_socket(self) -> Path:
        return self.socket_dir / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir / f"{self.driver_name}-reg.sock"
