"""The resource metrics: process collectors on the injected registry, the memory gauges and the
cgroup memory limit read at start-up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from event_processor.metrics import Metrics, OptionalGauge, read_memory_limit_bytes

# The Kubernetes base's memory limit (deploy/kubernetes/base/deployment.yaml: 256Mi).
LIMIT_256_MIB = 256 * 1024 * 1024
# What cgroup v1 reads for a group without a limit, on 4 KiB pages: LONG_MAX rounded down.
V1_UNLIMITED_4K = 9223372036854771712

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prometheus_client reads /proc"
)


def exposition(registry: CollectorRegistry) -> str:
    """What /metrics would serve from `registry`."""
    return generate_latest(registry).decode()


def cgroup_file(directory: Path, name: str, content: str) -> Path:
    """A stand-in for a cgroup file, holding `content`."""
    path = directory / name
    path.write_text(content, encoding="ascii")
    return path


# === on the injected registry ===================================================================


@linux_only
def test_process_metrics_are_on_the_injected_registry() -> None:
    """The registry a Metrics is built on carries RSS, CPU time and python_info."""
    registry = CollectorRegistry()
    Metrics(registry, memory_limit_bytes=None)
    text = exposition(registry)
    assert "\nprocess_resident_memory_bytes " in text
    assert "\nprocess_cpu_seconds_total " in text
    assert "\npython_info{" in text
    rss = registry.get_sample_value("process_resident_memory_bytes")
    assert rss is not None
    assert rss > 0


@linux_only
def test_two_metrics_on_two_registries_do_not_clash() -> None:
    """Each registry gets its own collectors and gauges; setting one leaves the other alone."""
    first, second = CollectorRegistry(), CollectorRegistry()
    a = Metrics(first, memory_limit_bytes=LIMIT_256_MIB)
    b = Metrics(second, memory_limit_bytes=None)
    a.budget_used_bytes.set(1024)
    assert first.get_sample_value("event_processor_memory_budget_used_bytes") == 1024
    assert second.get_sample_value("event_processor_memory_budget_used_bytes") == 0
    assert first.get_sample_value("event_processor_memory_limit_bytes") == LIMIT_256_MIB
    assert second.get_sample_value("event_processor_memory_limit_bytes") is None
    assert b.memory_limit_bytes.value is None
    for registry in (first, second):
        assert exposition(registry).count("\nprocess_resident_memory_bytes ") == 1


def test_a_second_memory_limit_gauge_on_one_registry_is_refused() -> None:
    """The optional gauge describes itself, so the registry rejects a duplicate name."""
    registry = CollectorRegistry()
    Metrics(registry, memory_limit_bytes=None)
    with pytest.raises(ValueError, match="event_processor_memory_limit_bytes"):
        OptionalGauge("event_processor_memory_limit_bytes", "again", registry, None)


# === the memory gauges ==========================================================================


def test_budget_gauges_carry_what_the_budget_sets() -> None:
    """budget_limit_bytes and budget_used_bytes export the values set on them, by those names."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, memory_limit_bytes=None)
    metrics.budget_limit_bytes.set(64 * 1024 * 1024)
    metrics.budget_used_bytes.set(12345)
    assert registry.get_sample_value("event_processor_memory_budget_bytes") == 64 * 1024 * 1024
    assert registry.get_sample_value("event_processor_memory_budget_used_bytes") == 12345


def test_memory_limit_gauge_exports_the_given_limit() -> None:
    """A known limit is one sample of event_processor_memory_limit_bytes."""
    registry = CollectorRegistry()
    Metrics(registry, memory_limit_bytes=LIMIT_256_MIB)
    assert registry.get_sample_value("event_processor_memory_limit_bytes") == LIMIT_256_MIB
    assert "\nevent_processor_memory_limit_bytes 2.68435456e+08\n" in exposition(registry)


def test_memory_limit_gauge_is_absent_without_a_limit() -> None:
    """No limit: the family keeps its HELP and TYPE but has no sample, rather than a bogus 0."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, memory_limit_bytes=None)
    text = exposition(registry)
    assert "# TYPE event_processor_memory_limit_bytes gauge" in text
    assert "\nevent_processor_memory_limit_bytes " not in text
    metrics.memory_limit_bytes.set(LIMIT_256_MIB)
    assert registry.get_sample_value("event_processor_memory_limit_bytes") == LIMIT_256_MIB


def test_metrics_read_the_cgroup_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without memory_limit_bytes, Metrics takes the limit from read_memory_limit_bytes once."""
    calls: list[None] = []

    def fake_read() -> int:
        calls.append(None)
        return LIMIT_256_MIB

    monkeypatch.setattr("event_processor.metrics.read_memory_limit_bytes", fake_read)
    registry = CollectorRegistry()
    Metrics(registry)
    exposition(registry)
    assert registry.get_sample_value("event_processor_memory_limit_bytes") == LIMIT_256_MIB
    assert len(calls) == 1


# === reading the cgroup =========================================================================


def test_cgroup_v2_limit_is_read(tmp_path: Path) -> None:
    """cgroup v2's memory.max holds the limit in bytes."""
    v2 = cgroup_file(tmp_path, "memory.max", f"{LIMIT_256_MIB}\n")
    assert read_memory_limit_bytes(v2, tmp_path / "missing") == LIMIT_256_MIB


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    """memory.max reading "max" is no limit, and v1's file is not consulted after it."""
    v2 = cgroup_file(tmp_path, "memory.max", "max\n")
    v1 = cgroup_file(tmp_path, "memory.limit_in_bytes", f"{LIMIT_256_MIB}\n")
    assert read_memory_limit_bytes(v2, v1) is None


def test_cgroup_v1_limit_is_read_when_there_is_no_v2(tmp_path: Path) -> None:
    """Without memory.max, cgroup v1's memory.limit_in_bytes gives the limit."""
    v1 = cgroup_file(tmp_path, "memory.limit_in_bytes", f"{LIMIT_256_MIB}\n")
    assert read_memory_limit_bytes(tmp_path / "missing", v1) == LIMIT_256_MIB


@pytest.mark.parametrize("unlimited", [V1_UNLIMITED_4K, 2**63 - 2**16], ids=["4k", "64k"])
def test_cgroup_v1_unlimited_sentinel_means_no_limit(tmp_path: Path, unlimited: int) -> None:
    """v1's unlimited value (LONG_MAX rounded down to a 4 KiB or 64 KiB page) is no limit."""
    v1 = cgroup_file(tmp_path, "memory.limit_in_bytes", f"{unlimited}\n")
    assert read_memory_limit_bytes(tmp_path / "missing", v1) is None


def test_missing_cgroup_files_mean_no_limit(tmp_path: Path) -> None:
    """Neither file exists (not Linux, no memory controller): no limit."""
    assert read_memory_limit_bytes(tmp_path / "memory.max", tmp_path / "limit") is None


@pytest.mark.parametrize("content", ["", "garbage\n", "0\n", "-1\n"], ids=repr)
def test_unusable_cgroup_values_mean_no_limit(tmp_path: Path, content: str) -> None:
    """An empty, unparsable, zero or negative value is never exported as a limit."""
    v2 = cgroup_file(tmp_path, "memory.max", content)
    assert read_memory_limit_bytes(v2, tmp_path / "missing") is None
