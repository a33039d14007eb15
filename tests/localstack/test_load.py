"""compose's world under load: the daemon and `sensor-fleet load` on LocalStack, Prometheus
scraping the daemon meanwhile; read back, the DLQ emptied and compared, every query evaluated."""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import yaml

from devworld.emulator import World
from devworld.verify import Verification, verify
from event_processor.contract.letters import read_event_letter, string_attribute
from event_processor.contract.parse import parse_submission
from event_processor.contract.rules import Rejection
from sensor_fleet.generator import encode
from tests.localstack.prom import (
    CONFIG,
    Prometheus,
    QueryError,
    finite_values,
    grafana_to_promql,
    wait_rules_evaluated,
)
from tests.localstack.support import (
    LocalStack,
    daemon,
    drain,
    fleet_load,
    queue_depth,
    stream_records,
    wait_drained,
)
from tests.static.support import dashboard_exprs

pytestmark = pytest.mark.localstack

SUBMISSIONS = 1500
SEED = 12
DRAIN_TIMEOUT_S = 900.0
# Panels that must show data while the daemon works (by title: a renamed one fails here).
THROUGHPUT_PANELS = ("Events published", "Messages received", "Throughput")
LATENCY_PANELS = (
    "Submission latency p99",
    "Submission latency",
    "AWS call latency p99 by operation",
)
# The range queries' resolution, as a Grafana panel of a few hundred pixels would ask for.
STEP_S = 2

# A dead letter as the comparison sees it: a whole submission by its content and reason, or
# one rejected event by (submission_id, sequence, reason).
SubmissionKey = tuple[str, str]
EventKey = tuple[str, int, str]


def content(doc: Any) -> str:
    """A submission without its `time_created` (the one field a seeded load does not repeat)."""
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k != "time_created"}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()


def expected_dead_letters(
    docs: list[dict[str, Any]],
) -> tuple[Counter[SubmissionKey], Counter[EventKey]]:
    submissions: Counter[SubmissionKey] = Counter()
    events: Counter[EventKey] = Counter()
    for doc in docs:
        parsed = parse_submission(encode(doc))
        if isinstance(parsed, Rejection):
            submissions[content(doc), str(parsed.reason)] += 1
        else:
            events.update(
                (parsed.submission_id, r.sequence, str(r.rejection.reason)) for r in parsed.rejected
            )
    return submissions, events


def dead_letters(
    messages: list[dict[str, Any]],
) -> tuple[Counter[SubmissionKey], Counter[EventKey]]:
    """What the DLQ held, read with the daemon's own letter format."""
    submissions: Counter[SubmissionKey] = Counter()
    events: Counter[EventKey] = Counter()
    for message in messages:
        attributes = message.get("MessageAttributes", {})
        letter = read_event_letter(message["Body"], attributes)
        if letter is None:
            doc = orjson.loads(base64.b64decode(message["Body"]))
            submissions[content(doc), str(string_attribute(attributes, "reason"))] += 1
        else:
            events.update((letter.submission_id, e.sequence, e.reason) for e in letter.events)
    return submissions, events


@dataclass
class LoadRun:
    verification: Verification
    expected: tuple[Counter[SubmissionKey], Counter[EventKey]]
    held: tuple[Counter[SubmissionKey], Counter[EventKey]]
    exit_code: int
    prometheus: Prometheus
    window: tuple[float, float]  # unix times: the load's first and last scrape


@pytest.fixture(scope="module")
def load_run(
    localstack: LocalStack, compose_world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadRun]:
    """The run every test of this module looks at (a few minutes of LocalStack, done once)."""
    world = compose_world
    directory = tmp_path_factory.mktemp("load")
    assert queue_depth(localstack, world.queue_url) == 0, "compose's queue is not empty"
    drain(localstack, world.dlq_url)  # the demo's dead letters: this run's are compared exactly
    with daemon(localstack, directory / "daemon.log") as running:
        prometheus = Prometheus(directory, f"127.0.0.1:{running.metrics_port}")
        try:
            prometheus.wait_target_up()
            began = time.time()
            load = fleet_load(localstack, SUBMISSIONS, SEED)
            took = wait_drained(localstack, world, DRAIN_TIMEOUT_S, running)
            ended = time.time()
            prometheus.wait_scraped_after(ended)
            code, _ = running.terminate()
            records = stream_records(localstack, world)
            result = verify(records, load.expected())
            published = sum(len(s) for s in result.firsts.values())
            print(
                f"\n[load] {load.report}; drained in {took:.0f} s ({published / took:.0f} events/s)"
            )
            print(f"[load] {result.summary()} ({result.foreign} records of other runs)")
            held = dead_letters(drain(localstack, world.dlq_url))
            yield LoadRun(
                result, expected_dead_letters(load.docs), held, code, prometheus, (began, ended)
            )
        finally:
            prometheus.stop()


def test_every_event_once_in_order(load_run: LoadRun) -> None:
    """A few thousand submissions: nothing missing, in order, on one shard, duplicates keep ids."""
    result = load_run.verification
    assert load_run.exit_code == 0
    assert result.ok, result.summary()
    assert result.records > 6 * SUBMISSIONS, (
        "the load was smaller than a few thousand submissions make"
    )


def test_dlq_holds_exactly_the_rejected(load_run: LoadRun) -> None:
    """The DLQ holds each rejected submission and each rejected event once, with its reason."""
    (want_submissions, want_events), (held_submissions, held_events) = (
        load_run.expected,
        load_run.held,
    )
    print(f"\n[load] DLQ: {held_submissions.total()} submissions, {held_events.total()} events")
    assert want_submissions.total() > 0
    assert want_events.total() > 0
    assert held_submissions == want_submissions
    assert held_events == want_events


def test_dashboard_queries_evaluate(load_run: LoadRun) -> None:
    """Every query of the Grafana dashboard evaluates without error over the load."""
    began, ended = load_run.window
    errors = {}
    for _, title, expr in dashboard_exprs():
        promql = grafana_to_promql(expr, step_s=STEP_S, range_s=math.ceil(ended - began))
        try:
            load_run.prometheus.query_range(promql, began, ended, STEP_S)
        except QueryError as exc:
            errors[f"{title}: {promql}"] = str(exc)
    assert not errors, errors


def test_throughput_and_latency_panels_have_data(load_run: LoadRun) -> None:
    """Each query of the throughput and latency panels returns data points while the load runs."""
    began, ended = load_run.window
    queries: dict[str, list[str]] = {}
    for _, title, expr in dashboard_exprs():
        queries.setdefault(title, []).append(expr)
    assert set(THROUGHPUT_PANELS + LATENCY_PANELS) <= set(queries), sorted(queries)
    for title in THROUGHPUT_PANELS + LATENCY_PANELS:
        for expr in queries[title]:
            promql = grafana_to_promql(expr, step_s=STEP_S, range_s=math.ceil(ended - began))
            values = finite_values(load_run.prometheus.query_range(promql, began, ended, STEP_S))
            assert values, f"{title}: no data for {promql}"
            assert max(values) > 0, f"{title}: only zeros for {promql}"
            print(f"[prometheus] {title}: {len(values)} points, max {max(values):.3g} <- {promql}")


def test_alert_rules_load_and_evaluate(load_run: LoadRun) -> None:
    """Prometheus loads every alert rule of the project and evaluates each without error."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    files = [CONFIG.parent / name for name in config["rule_files"]]
    declared = [
        rule["expr"]
        for path in files
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    ]
    rules = wait_rules_evaluated(load_run.prometheus)
    assert len(rules) == len(declared)
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    errors = {}
    _, ended = load_run.window
    for expr in declared:
        try:
            load_run.prometheus.query(expr, at=ended)
        except QueryError as exc:
            errors[expr] = str(exc)
    assert not errors, errors
    print(f"\n[prometheus] {len(rules)} alert rules loaded, every one evaluated with health ok")


def test_daemon_was_scraped_throughout(load_run: LoadRun) -> None:
    """Prometheus scraped the daemon (up == 1) at every step of the load."""
    began, ended = load_run.window
    series = load_run.prometheus.query_range('up{job="event-processor"}', began, ended, STEP_S)
    values = finite_values(series)
    assert values
    assert min(values) == 1
