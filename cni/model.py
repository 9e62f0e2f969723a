"""The agent-side CNI model in one import: request parsing, results, errors
and dispatch. Each lives in its own module; this only gathers them."""

from __future__ import annotations

from nicwarden.cni.args import CniArgs, parse_cni_args
from nicwarden.cni.dispatch import CniBackend, handle, handle_invocation
from nicwarden.cni.errors import CniError, from_nicwarden_error
from nicwarden.cni.options import SriovOptions, parse_sriov_options
from nicwarden.cni.request import Attachment, CniRequest, Command, parse_request
from nicwarden.cni.result import (
    DNS,
    Interface,
    IPConfig,
    Result,
    ResultFormatError,
    Route,
    parse_result,
)
from nicwarden.cni.version import CURRENT_VERSION, SUPPORTED_VERSIONS

__all__ = [
    "CURRENT_VERSION",
    "DNS",
    "SUPPORTED_VERSIONS",
    "Attachment",
    "CniArgs",
    "CniBackend",
    "CniError",
    "CniRequest",
    "Command",
    "IPConfig",
    "Interface",
    "Result",
    "ResultFormatError",
    "Route",
    "SriovOptions",
    "from_nicwarden_error",
    "handle",
    "handle_invocation",
    "parse_cni_args",
    "parse_request",
    "parse_result",
    "parse_sriov_options",
]
