"""The Prometheus alerting rules in deploy/prometheus/, checked and unit-tested with promtool.

promtool comes with Debian's `prometheus` package, which CI installs with apt-get; without it
the promtool tests fail with the install command, they never skip. The rest are cross-checks:
every metric a rule selects is one the daemon exports or a documented external one, every
alert has a runbook section in docs/alerts.md that shows the same query, the unit tests make
every alert fire and stay silent, and prometheus.yml loads the rule files.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.static.support import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    exported_metric_names,
    load_yaml,
    promql_metric_names,
    run,
)

RULE_TEST_DIR = PROMETHEUS_DIR / "tests"
DOCS = ROOT / "docs" / "alerts.md"
RUNBOOK_PREFIX = "docs/alerts.md#"
SEVERITIES = {"warning", "critical"}
INSTALL_HINT = "apt-get install prometheus"

# Series the rules select that the daemon does not export; docs/alerts.md describes each.
EXTERNAL_METRICS = {
    # Prometheus's own: one per scrape target, 1 when the scrape succeeded.
    "up",
    # prometheus/cloudwatch_exporter (optional): AWS/SQS ApproximateNumberOfMessagesVisible
    # (Average) and ApproximateAgeOfOldestMessage (Maximum), labelled by queue_name.
    "aws_sqs_approximate_number_of_messages_visible_average",
    "aws_sqs_approximate_age_of_oldest_message_maximum",
}


def rule_files() -> list[Path]:
    """deploy/prometheus/alerts.yml and deploy/prometheus/rules/*.yml, whichever exist."""
    files = [PROMETHEUS_DIR / "alerts.yml", *sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))]
    existing = [path for path in files if path.is_file()]
    assert existing, f"no rule file in {PROMETHEUS_DIR}"
    return existing


def rule_test_files() -> list[Path]:
    files = sorted(RULE_TEST_DIR.glob("*.yml"))
    assert files, f"no promtool unit test in {RULE_TEST_DIR}"
    return files


def alerting_rules() -> list[dict[str, Any]]:
    """Every alerting rule of every rule file (recording rules have no `alert`)."""
    rules: list[dict[str, Any]] = []
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    assert rules, "no alerting rule"
    return rules


def rule_id(rule: dict[str, Any]) -> str:
    return f"{rule['alert']}-{rule.get('labels', {}).get('severity')}"


def promtool() -> str:
    """The path of promtool; fails (never skips) the calling test when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed (not on PATH), so the alerting-rule tests did not run. "
            f"Install it with `{INSTALL_HINT}` (Debian/Ubuntu, as root; it ships "
            "/usr/bin/promtool) or put the promtool of a release from "
            "https://prometheus.io/download/ on PATH.",
            pytrace=False,
        )
    return path


# --- docs/alerts.md --------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def docs_anchors() -> set[str]:
    """Anchors of the headings of docs/alerts.md (fenced code blocks skipped)."""
    anchors: set[str] = set()
    fenced = False
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            anchors.add(github_anchor(match.group(1)))
    return anchors


def squash(text: str) -> str:
    return " ".join(text.split())


# === promtool ===================================================================================


def test_missing_promtool_fails_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without promtool on PATH the rule tests fail, naming the tool and how to install it."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failure:
        promtool()
    assert "promtool" in str(failure.value)
    assert INSTALL_HINT in str(failure.value)


def test_rule_files_pass_promtool_check() -> None:
    """`promtool check rules` accepts every rule file (syntax, PromQL, templates, duplicates)."""
    result = run([promtool(), "check", "rules", *map(str, rule_files())], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    """`promtool test rules` passes every unit test in deploy/prometheus/tests/."""
    result = run([promtool(), "test", "rules", *map(str, rule_test_files())], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


# === the unit tests cover the rules =============================================================


def test_unit_tests_load_the_real_rule_files() -> None:
    """The promtool unit tests load deploy/prometheus's rule files, all of them."""
    loaded: set[Path] = set()
    for path in rule_test_files():
        for entry in load_yaml(path)["rule_files"]:
            matches = {p.resolve() for p in path.parent.glob(entry)}
            assert matches, f"{path.name}: rule_files entry {entry!r} matches no file"
            loaded |= matches
    assert loaded == {p.resolve() for p in rule_files()}


def test_unit_tests_make_every_alert_fire_and_stay_silent() -> None:
    """Every alert, at each of its severities, fires in a unit test and is silent in another."""
    firing: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for path in rule_test_files():
        for group in load_yaml(path)["tests"]:
            for case in group.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                if not expected:
                    silent.add(case["alertname"])
                firing.update(
                    (case["alertname"], alert["exp_labels"]["severity"]) for alert in expected
                )
    rules = {(rule["alert"], rule["labels"]["severity"]) for rule in alerting_rules()}
    assert rules - firing == set(), "never fires in a unit test"
    assert {alert for alert, _ in rules} - silent == set(), "never tested silent"
    assert firing - rules == set(), "unit tests expect alerts no rule defines"


# === the rules themselves =======================================================================


@pytest.mark.parametrize("rule", alerting_rules(), ids=rule_id)
def test_alert_has_for_severity_annotations_and_runbook(rule: dict[str, Any]) -> None:
    """Each alert waits a `for:`, has a severity, a summary, a description and a runbook link."""
    assert re.fullmatch(r"(?:\d+(?:ms|[smhdwy]))+", str(rule.get("for", ""))), rule["alert"]
    assert not re.fullmatch(r"(?:0+(?:ms|[smhdwy]))+", str(rule["for"])), rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOK_PREFIX + github_anchor(rule["alert"])


def test_runbook_links_resolve_to_sections_of_the_docs() -> None:
    """Every runbook_url points at a heading that exists in docs/alerts.md."""
    anchors = docs_anchors()
    for rule in alerting_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), url
        assert url.removeprefix(RUNBOOK_PREFIX) in anchors, f"{rule['alert']}: no section {url}"


def test_docs_show_every_alert_query() -> None:
    """docs/alerts.md shows each rule's expression as it is in the rule file."""
    docs = squash(DOCS.read_text(encoding="utf-8"))
    for rule in alerting_rules():
        assert squash(rule["expr"]) in docs, f"{rule_id(rule)}: expression not in {DOCS.name}"


def test_rules_select_only_metrics_the_daemon_exports_or_documented_ones() -> None:
    """A rule's metrics are the daemon's own, or `up` and the CloudWatch exporter's, documented."""
    exported = exported_metric_names()
    used: set[str] = set()
    for rule in alerting_rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule_id(rule)}: no metric found in {rule['expr']!r}"
        unknown = names - exported - EXTERNAL_METRICS
        assert not unknown, f"{rule_id(rule)}: {sorted(unknown)} neither exported nor external"
        used |= names
    assert not EXTERNAL_METRICS - used, f"unused external metrics: {EXTERNAL_METRICS - used}"
    docs = DOCS.read_text(encoding="utf-8")
    for name in EXTERNAL_METRICS:
        # In code spans, with or without labels: `up`, `aws_sqs_..._average{queue_name}`.
        assert re.search(f"`{name}[`{{]", docs), f"{name} is not described in {DOCS.name}"


def test_job_matchers_name_a_scrape_job() -> None:
    """Every job="..." a rule matches is a job_name of deploy/prometheus/prometheus.yml."""
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    matched = {
        match.group(1)
        for rule in alerting_rules()
        for match in re.finditer(r'\bjob\s*=\s*"([^"]*)"', rule["expr"])
    }
    assert matched, "no rule is about the daemon's scrape job"
    assert matched <= jobs


def test_prometheus_config_loads_the_rule_files() -> None:
    """prometheus.yml's rule_files (relative to it, globs allowed) are exactly the rule files."""
    entries = load_yaml(PROMETHEUS_CONFIG).get("rule_files") or []
    loaded = {p.resolve() for entry in entries for p in PROMETHEUS_CONFIG.parent.glob(entry)}
    assert loaded == {p.resolve() for p in rule_files()}


# === the helpers ================================================================================


def test_metric_name_scan_sees_through_promql() -> None:
    """The scan skips functions, label lists, matchers, keywords, offsets, numbers and strings."""
    expr = (
        'sum by (queue_name) (delta(a_average{queue_name=~".*dlq.*"}[1h]))'
        " - on () group_left () (sum(increase(b_total[1h] offset 10m)) or vector(0)) > 20"
        " unless on (job, instance) histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m])))"
        ' > 1e-9 and absent(up{job="x"}) or d'
    )
    assert promql_metric_names(expr) == {"a_average", "b_total", "c_bucket", "up", "d"}


def test_exported_names_carry_the_exposition_suffixes() -> None:
    """Counters are known by _total, histograms by _bucket/_sum/_count, gauges by their name;
    the process collector's series, the memory limit gauge and the key set's gauges are among
    them."""
    exported = exported_metric_names()
    assert "event_processor_messages_received_total" in exported
    assert "event_processor_messages_received" not in exported
    assert "event_processor_submission_latency_seconds_bucket" in exported
    assert "event_processor_submission_latency_seconds" not in exported
    assert "event_processor_in_flight_submissions" in exported
    # The memory rule's: prometheus_client's process collector, and the limit gauge even on a
    # machine whose cgroup has no limit (its family is there without a sample).
    assert "process_resident_memory_bytes" in exported
    assert "process_cpu_seconds_total" in exported
    assert "event_processor_memory_limit_bytes" in exported
    # The key set rule's: absent until the first read and under AUTH_MODE=off (a fresh Metrics
    # has read nothing), yet their families are there.
    assert "event_processor_auth_keyset_age_seconds" in exported
    assert "event_processor_auth_keyset_refresh_interval_seconds" in exported


def test_github_anchor() -> None:
    """Headings become GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    assert github_anchor("EventProcessorDown") == "eventprocessordown"
    assert github_anchor("Daemon & CloudWatch: sources") == "daemon--cloudwatch-sources"
