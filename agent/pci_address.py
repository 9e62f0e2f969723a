"""PCI addresses as users write them and as sysfs names them. Pure.

sysfs names a function ``DDDD:BB:DD.F`` in lower case. Users also write the
short ``BB:DD.F`` (domain 0000) and upper-case hex. Domains are 4 hex digits
on ordinary hosts, but Intel VMD exposes 5+ digit ones (``10000:e0:00.0``),
so up to 8 are accepted. The device number is 5 bits (00-1f), the function 3.
"""

from __future__ import annotations

import re

_PCI = re.compile(
    r"(?:(?P<domain>[0-9a-f]{4,8}):)?(?P<bus>[0-9a-f]{2}):(?P<device>[01][0-9a-f])\.(?P<function>[0-7])"
)
EXAMPLE = "0000:18:00.0"


def normalize_pci_address(value: object) -> str | None:
    """The sysfs form of ``value`` (``0000:18:02.1``), or None when it is not
    a PCI address."""
    if not isinstance(value, str):
        return None
    # No stripping: a stray newline in a deviceID is a broken config to name,
    # not a value to guess at.
    m = _PCI.fullmatch(value.lower())
    if m is None:
        return None
    return f"{m['domain'] or '0000'}:{m['bus']}:{m['device']}.{m['function']}"
