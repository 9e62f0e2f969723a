from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nicwarden.agent import config as cfg
from nicwarden.agent.config import AgentConfig, SimShape, load_config
from nicwarden.agent.errors import ConfigError


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def nested(dotted: str, value: object) -> dict[str, object]:
    """{"metrics.port": 1} -> {"metrics": {"port": 1}}"""
    head, _, rest = dotted.partition(".")
    return {head: nested(rest, value) if rest else value}


def error_for(path: Path | None, overrides: dict[str, object] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or {})
    return info.value.message


# key, bad value, words the reason must contain
BAD_VALUES: list[tuple[str, object, str]] = [
    ("stateDir", "relative/state", "absolute path"),
    ("stateDir", 5, "non-empty string"),
    ("socket", "", "non-empty string"),
    ("cniSocket", ["a"], "non-empty string"),
    ("sysfsRoot", "sys", "absolute path"),
    ("devRoot", None, "non-empty string"),
    ("logLevel", "verbose", "one of debug, info, warning, error"),
    ("logLevel", "INFO", "one of"),
    ("logFormat", "xml", "one of json, text"),
    ("metrics", "on", "expected a mapping"),
    ("metrics.enabled", "yes please", "true or false"),
    ("metrics.enabled", 1, "true or false"),
    ("metrics.address", "localhost", "IP address"),
    ("metrics.address", "300.1.1.1", "IP address"),
    ("metrics.port", "abc", "integer 1-65535, got 'abc'"),
    ("metrics.port", 0, "integer 1-65535"),
    ("metrics.port", 65536, "integer 1-65535"),
    ("metrics.port", True, "integer 1-65535, got true"),
    ("metrics.port", 80.5, "integer 1-65535"),
    ("metrics.allowRemote", "no", "true or false"),
    ("simulate", "2by8", "<pfs>x<vfs>"),
    ("simulate", "0x8", "1-16 PFs"),
    ("simulate", "17x8", "1-16 PFs"),
    ("simulate", "2x257", "0-256 VFs"),
    ("simulate", 28, "<pfs>x<vfs>"),
    ("simulate", ["2x8"], "<pfs>x<vfs>"),
    ("kubeletDir", "device-plugins", "absolute path"),
    ("deviceInfoDir", 3, "non-empty string"),
    ("manifestsDir", "manifests", "absolute path"),
    ("reconcileInterval", 0, "positive duration"),
    ("reconcileInterval", -5, "positive duration"),
    ("reconcileInterval", "soon", "positive duration"),
    ("reconcileInterval", "5 parsecs", "positive duration"),
    ("reconcileInterval", True, "positive duration"),
    ("resourceList", {"a": 1}, "list of mappings"),
    ("resourceList[1]", [{"a": 1}, "pool"], "expected a mapping"),
    ("sriov", "eth0", "list of mappings"),
    ("resourcePrefix", "Nicwarden_IO", "DNS subdomain"),
    ("resourcePrefix", "", "non-empty string"),
    ("cni", {}, "unknown key"),
    ("policy", "deny", "expected a mapping"),
    ("policy.bpfInstance", "a.b", "policy.bpfInstance"),
    ("policy.allowIcmp", "sometimes", "policy.allowIcmp"),
]


def _yaml_for(key: str, value: object) -> dict[str, object]:
    # "resourceList[1]" names the bad list item; the value is the whole list.
    return nested(key.split("[")[0], value)


@pytest.mark.parametrize(("key", "value", "reason"), BAD_VALUES)
def test_bad_value_in_file_names_file_key_and_reason(
    tmp_path: Path, key: str, value: object, reason: str
) -> None:
    path = write(tmp_path, _yaml_for(key, value))
    message = error_for(path)
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message
    assert message.count("\n") == 0  # exactly one problem reported


@pytest.mark.parametrize(("key", "value", "reason"), [b for b in BAD_VALUES if "[" not in b[0]])
def test_bad_value_in_override_names_command_line(key: str, value: object, reason: str) -> None:
    message = error_for(None, {key: value})
    assert message.startswith(f"command line: {key}: "), message
    assert reason in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, {"logLevel": "loud", "metrics": {"port": "x", "prot": 1}})
    lines = error_for(path).splitlines()
    assert sorted(line.split(": ")[1] for line in lines) == [
        "logLevel",
        "metrics.port",
        "metrics.prot",
    ]


def test_defaults() -> None:
    c = load_config(None, {})
    assert c == AgentConfig()
    assert c.state_dir == Path("/var/lib/nicwarden")
    assert c.socket == Path("/run/nicwarden/agent.sock")
    assert c.cni_socket == Path("/run/nicwarden/cni.sock")
    assert (c.sysfs_root, c.dev_root) == (Path("/sys"), Path("/dev"))
    assert (c.log_level, c.log_format) == ("info", "json")
    assert c.metrics == cfg.MetricsConfig(True, "127.0.0.1", 9464, False)
    assert c.simulate is None and c.manifests_dir is None
    assert c.kubelet_dir == Path("/var/lib/kubelet/device-plugins")
    assert c.device_info_dir == Path("/var/run/k8s.cni.cncf.io/devinfo")
    assert c.reconcile_interval == 30.0
    assert (c.resource_list, c.sriov) == ([], [])
    assert c.policy == cfg.PolicyConfig(True, False, False, "default")
    assert c.resource_prefix == "nicwarden.io"


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}) == AgentConfig()


def test_valid_file_is_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
stateDir: /srv/nw
logLevel: debug
logFormat: text
metrics: {enabled: false, port: 9100}
simulate: 2x8
manifestsDir: /etc/nicwarden/manifests
reconcileInterval: 1.5m
resourceList:
  - resourceName: intel_sriov
    selectors: {vendors: ["8086"]}
policy: {allowIcmp: true}
""",
    )
    c = load_config(path, {})
    assert c.state_dir == Path("/srv/nw")
    assert (c.log_level, c.log_format) == ("debug", "text")
    assert (c.metrics.enabled, c.metrics.port) == (False, 9100)
    assert c.simulate == SimShape(2, 8)
    assert c.manifests_dir == Path("/etc/nicwarden/manifests")
    assert c.reconcile_interval == 90.0
    assert c.resource_list == [{"resourceName": "intel_sriov", "selectors": {"vendors": ["8086"]}}]
    assert c.policy.allow_icmp is True


def test_simulate_mapping_is_kept_raw(tmp_path: Path) -> None:
    spec = {"pfs": [{"name": "ens1f0", "vfs": 4}]}
    assert load_config(write(tmp_path, {"simulate": spec}), {}).simulate == spec


@pytest.mark.parametrize(
    ("text", "seconds"), [(30, 30.0), (0.5, 0.5), ("45", 45.0), ("500ms", 0.5), ("2h", 7200.0)]
)
def test_duration_forms(text: object, seconds: float) -> None:
    assert cfg.duration(text) == seconds


def test_unknown_key_suggests_close_match(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, {"stateDri": "/x"}))
    assert message == f"{tmp_path / 'config.yaml'}: stateDri: unknown key; did you mean 'stateDir'?"


def test_unknown_nested_key_suggests_close_match(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, {"metrics": {"allow_remote": True}}))
    assert "metrics.allow_remote: unknown key; did you mean 'allowRemote'?" in message


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, {"zzzz": 1}))
    assert "zzzz: unknown key (known keys: stateDir, socket," in message


def test_snake_case_keys_are_not_accepted(tmp_path: Path) -> None:
    assert "state_dir: unknown key; did you mean 'stateDir'?" in error_for(
        write(tmp_path, {"state_dir": "/x"})
    )


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "stateDir: /x\nmetrics: [1, 2\nlogLevel: info\n")
    message = error_for(path)
    assert message.startswith(f"{path}: line 3, column "), message
    assert "invalid YAML" in message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "logLevel: debug\nstateDir: /a\nlogLevel: info\n")
    assert error_for(path) == f"{path}: line 3, column 1: invalid YAML: duplicate key 'logLevel'"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping at the top level, got a list" in error_for(
        write(tmp_path, "- a\n- b\n")
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert error_for(path) == f"{path}: cannot read config file: No such file or directory"


def test_override_beats_file_and_is_validated_the_same_way(tmp_path: Path) -> None:
    path = write(tmp_path, {"metrics": {"port": 9000}, "logLevel": "debug"})
    c = load_config(path, {"metrics.port": "9101", "logFormat": "text", "simulate": "1x0"})
    assert (c.metrics.port, c.log_level, c.log_format) == (9101, "debug", "text")
    assert c.simulate == SimShape(1, 0)


def test_bad_file_value_is_still_attributed_to_file_next_to_an_override(tmp_path: Path) -> None:
    path = write(tmp_path, {"metrics": {"port": "abc"}})
    lines = error_for(path, {"metrics.enabled": "maybe"}).splitlines()
    assert f"{path}: metrics.port: expected an integer 1-65535, got 'abc'" in lines
    assert "command line: metrics.enabled: expected true or false, got 'maybe'" in lines


def test_override_unknown_key(tmp_path: Path) -> None:
    assert error_for(None, {"metrics.prot": 1}) == (
        "command line: metrics.prot: unknown key; did you mean 'port'?"
    )
    assert error_for(None, {"metrix.port": 1}).startswith(
        "command line: metrix: unknown key; did you mean 'metrics'?"
    )


def test_override_through_a_scalar_is_an_error(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, {"logLevel": "info"}), {"logLevel.x": "debug"})
    assert message == "command line: logLevel.x: cannot set logLevel.x: logLevel is not a mapping"
    # Without the file's value the override itself builds the bad mapping.
    assert error_for(None, {"logLevel.x": "debug"}).startswith("command line: logLevel: expected")


def test_override_malformed_key() -> None:
    assert error_for(None, {"metrics..port": 1}) == "command line: metrics..port: malformed key"


def test_metrics_non_loopback_requires_allow_remote(tmp_path: Path) -> None:
    path = write(tmp_path, {"metrics": {"address": "0.0.0.0"}})
    assert error_for(path) == (
        f"{path}: metrics.address: 0.0.0.0 is not a loopback address;"
        " set metrics.allowRemote: true to expose metrics off-node"
    )
    assert "metrics.address" in error_for(None, {"metrics.address": "10.0.0.5"})


@pytest.mark.parametrize(
    "metrics",
    [
        {"address": "0.0.0.0", "allowRemote": True},
        {"address": "::", "allowRemote": True},
        {"address": "127.0.0.2"},
        {"address": "::1"},
        {"address": "10.1.1.1", "enabled": False},  # not bound at all
    ],
)
def test_metrics_addresses_accepted(tmp_path: Path, metrics: dict[str, object]) -> None:
    assert load_config(write(tmp_path, {"metrics": metrics}), {}).metrics.address


def test_sockets_must_differ() -> None:
    message = error_for(None, {"cniSocket": "/run/nicwarden/agent.sock"})
    assert message == "command line: cniSocket: must differ from socket"


def test_to_dict_round_trips(tmp_path: Path) -> None:
    original = load_config(
        None, {"simulate": "2x8", "manifestsDir": "/m", "metrics.port": 1234, "sriov": [{"a": 1}]}
    )
    dumped = original.to_dict()
    assert dumped["simulate"] == "2x8"
    assert dumped["metrics"] == {
        "enabled": True,
        "address": "127.0.0.1",
        "port": 1234,
        "allowRemote": False,
    }
    assert load_config(write(tmp_path, dumped), {}) == original


def test_defaults_are_not_shared_between_configs() -> None:
    first = load_config(None, {})
    first.resource_list.append({"x": 1})
    first.sriov.append({"y": 2})
    assert load_config(None, {}).resource_list == []
    assert AgentConfig().sriov == []


def test_every_setting_is_documented() -> None:
    rows = cfg.settings_reference(AgentConfig)
    assert {r.key for r in rows} >= {
        "stateDir",
        "metrics.port",
        "metrics.allowRemote",
        "policy.allowIcmp",
        "policy.bpfInstance",
    }
    assert all(r.doc for r in rows)
    assert next(r for r in rows if r.key == "metrics.port").default == 9464
