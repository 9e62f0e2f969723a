"""nicwarden_thread_cpu_seconds_total: thread names to bounded roles, and
counters that stay monotonic when threads come and go."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nicwarden.agent.metrics_collect import ThreadCpuCollector
from nicwarden.agent.thread_names import thread_role


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("policy-feed", "policy-feed"),
        ("k8s-watch-pods", "k8s-watch-pods"),
        ("grpc_3", "grpc"),
        ("ThreadPoolExecutor-92_0", "ThreadPoolExecutor"),
        ("Thread-7 (serve_forever)", "serve_forever"),
        ("sysfs-write:sriov_numvfs", "sysfs-write"),
        ("cni-http /run/nicwarden/cni.sock", "cni-http"),
        ("MainThread", "MainThread"),
        ("Dummy-1", "Dummy"),
    ],
)
def test_roles_drop_instance_parts(name: str, role: str) -> None:
    assert thread_role(name) == role


def stat(utime: int, stime: int) -> str:
    # pid (comm with ") " inside) state, then fields 4.. ; utime/stime are 14 and 15
    return f"42 (odd) name) S {' '.join(['0'] * 10)} {utime} {stime} 0 0 20 0 1\n"


def values(collector: ThreadCpuCollector) -> dict[str, float]:
    (fam, ok) = list(collector.collect())
    assert ok.samples[0].value == 1.0
    return {s.labels["thread"]: s.value for s in fam.samples}


def test_threads_by_role_and_exited_threads_keep_their_time(tmp_path: Path) -> None:
    me = threading.current_thread()
    me_id = me.native_id
    assert me_id is not None
    task = tmp_path / "task"
    for tid, (u, s) in {me_id: (300, 100), 1: (50, 50), 2: (10, 0)}.items():
        (task / str(tid)).mkdir(parents=True)
        (task / str(tid) / "stat").write_text(stat(u, s))
    collector = ThreadCpuCollector(str(task))
    ticks = 100.0  # SC_CLK_TCK on Linux
    first = values(collector)
    assert first[me.name] == pytest.approx(400 / ticks)
    assert first["other"] == pytest.approx(110 / ticks)  # tids Python did not start

    (task / "2" / "stat").unlink()  # an "other" thread exits
    (task / "2").rmdir()
    (task / "1" / "stat").write_text(stat(60, 50))
    assert values(collector)["other"] == pytest.approx(120 / ticks)  # 110 + 10, nothing lost
