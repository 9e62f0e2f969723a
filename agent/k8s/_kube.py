"""The ``kubernetes`` client, typed as ``Any`` in one place.

The package ships partial annotations that ``mypy --strict`` rejects at every
call ("untyped function in typed context"); the project treats it as untyped
(pyproject.toml), so the rest of this package imports it from here.
"""

from __future__ import annotations

import importlib
from typing import Any

client: Any = importlib.import_module("kubernetes.client")
config: Any = importlib.import_module("kubernetes.config")
watch: Any = importlib.import_module("kubernetes.watch")
ApiException: Any = client.exceptions.ApiException
