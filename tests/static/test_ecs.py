"""The ECS Fargate CloudFormation template (deploy/ecs), checked without an AWS account.

cfn-lint validates it against the CloudFormation resource specification; checkov scans it; the
rest are cross-checks with the daemon: the task role's actions are derived from the AWS calls in
event_processor's code, the environment validates as Settings, the health check is run against
a fake /healthz, and the scaling target matches the Kubernetes one.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import yaml

from event_processor.config import AuthMode, Settings
from tests.static.support import (
    BENCH_PEAK_RSS_MIB,
    CONTAINER_TMP,
    DEPLOYMENT_DOC,
    ROOT,
    Healthz,
    Unhealthy,
    checkov_config_skips,
    checkov_failures,
    checkov_json,
    daemon_aws_actions,
    daemon_settings,
    image_user,
    load_yaml,
    run,
    serve_http,
    tool,
)

ECS_DIR = ROOT / "deploy" / "ecs"
TEMPLATE = ECS_DIR / "event-processor.yaml"
CHECKOV_CONFIG = ECS_DIR / ".checkov.yaml"
K8S_SCALEDOBJECT = ROOT / "deploy" / "kubernetes" / "base" / "scaledobject.yaml"
# cfn-lint checks the resource specification of each region named here.
LINT_REGIONS = ("us-east-1", "eu-west-1")
# Fargate's ceiling for stopTimeout.
FARGATE_MAX_STOP_TIMEOUT_S = 120
# Fargate's task sizes: memory (MiB) allowed with each CPU value the template offers.
FARGATE_MEMORY = {
    256: {512, 1024, 2048},
    512: set(range(1024, 4097, 1024)),
    1024: set(range(2048, 8193, 1024)),
}
# `make bench`: about half a core while draining at ~4,000 events/s (peak RSS: support's
# BENCH_PEAK_RSS_MIB).
BENCH_CPU_UNITS = 512

# What each resource's statement grants (docs/design.md, "How is it deployed?").
EXPECTED_GRANTS = {
    "QueueName": {
        "sqs:GetQueueUrl",
        "sqs:GetQueueAttributes",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    },
    "DeadLetterQueueName": {"sqs:GetQueueAttributes", "sqs:SendMessage"},
    "StreamName": {"kinesis:DescribeStreamSummary", "kinesis:PutRecords"},
    "AuthKeysSecretArn": {"secretsmanager:GetSecretValue"},
}
# The sensors' key set as a deployment names it (the parameter's default is empty: AuthMode
# "off" only, which the template's rule enforces), and a customer-managed key.
KEY_SET_ARN = (
    "arn:aws:secretsmanager:eu-west-1:123456789012:secret:event-processor/sensor-keys-AbCdEf"
)
KMS_KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
# Parameters given at deployment beyond the defaults, for reading the template as deployed.
AS_DEPLOYED = {"AuthKeysSecretArn": KEY_SET_ARN}
# Pseudo parameters, for reading the template's values as the daemon would see them.
PSEUDO = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}


# --- CloudFormation YAML -----------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsics (!Ref, !Sub, ...) as their long form."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    data = yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    assert isinstance(data, dict)
    return data


def resource(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties = template["Resources"][name]["Properties"]
    assert isinstance(properties, dict)
    return properties


def parameters(template: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    """Every parameter's value as deployed: `given` (AS_DEPLOYED by default) over the defaults;
    a parameter without either reads as <name>."""
    values = {
        name: str(spec["Default"]) if "Default" in spec else f"<{name}>"
        for name, spec in template["Parameters"].items()
    }
    values.update(AS_DEPLOYED if given is None else given)
    return values


def resolve(template: dict[str, Any], value: Any, given: dict[str, str] | None = None) -> str:
    """A property value as deployed with `parameters` and PSEUDO's account."""
    if isinstance(value, str | int | float):
        return str(value)
    assert isinstance(value, dict), value
    assert len(value) == 1, value
    (function, argument), *_ = value.items()
    values = parameters(template, given)

    def lookup(name: str) -> str:
        if name in PSEUDO:
            return PSEUDO[name]
        if "." in name:  # GetAtt
            return f"<{name}>"
        return values[name]

    if function == "Ref":
        return lookup(argument)
    if function == "Fn::Sub":
        return re.sub(r"\$\{([^}!]+)\}", lambda m: lookup(m[1]), argument)
    pytest.fail(f"cannot resolve {value}")


def the_container(template: dict[str, Any]) -> dict[str, Any]:
    (only,) = resource(template, "TaskDefinition")["ContainerDefinitions"]
    assert isinstance(only, dict)
    return only


def as_deployed(
    template: dict[str, Any], items: list[Any], given: dict[str, str] | None = None
) -> list[Any]:
    """A list property as deployed with `parameters`: each Fn::If item replaced by the branch
    its condition picks, AWS::NoValue dropped."""
    values = parameters(template, given)
    chosen: list[Any] = []
    for item in items:
        value = item
        if isinstance(item, dict) and "Fn::If" in item:
            condition, when_true, when_false = item["Fn::If"]
            holds = evaluate_rule(template["Conditions"][condition], values)
            value = when_true if holds else when_false
        if value != {"Ref": "AWS::NoValue"}:
            chosen.append(value)
    return chosen


def environment(template: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    entries = as_deployed(template, the_container(template)["Environment"], given)
    return {e["Name"]: resolve(template, e["Value"], given) for e in entries}


def task_role_statements(
    template: dict[str, Any], given: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The task role's statements as deployed with `parameters`."""
    return [
        statement
        for policy in resource(template, "TaskRole")["Policies"]
        for statement in as_deployed(template, policy["PolicyDocument"]["Statement"], given)
    ]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# === linters ====================================================================================


@dataclass(frozen=True)
class CfnLint:
    """cfn-lint's findings on the template and on a copy with a misspelled property."""

    template: list[dict[str, Any]]
    misspelled: list[dict[str, Any]]
    returncode: int


@pytest.fixture(scope="module")
def cfn_lint(tmp_path_factory: pytest.TempPathFactory) -> CfnLint:
    """One cfn-lint run (~4 s of start-up) over both files, its findings by file."""
    text = TEMPLATE.read_text(encoding="utf-8")
    assert "StopTimeout:" in text
    bad = tmp_path_factory.mktemp("cfn-lint") / "bad.yaml"
    bad.write_text(text.replace("StopTimeout:", "StopTimout:"), encoding="utf-8")
    command = [tool("cfn-lint", "cfn-lint"), "--format", "json", "--regions", *LINT_REGIONS]
    result = run([*command, "--", str(TEMPLATE), str(bad)])
    findings = json.loads(result.stdout)
    assert isinstance(findings, list), result.stdout + result.stderr
    by_file: dict[str, list[dict[str, Any]]] = {str(TEMPLATE): [], str(bad): []}
    for finding in findings:
        assert finding["Filename"] in by_file, finding
        by_file[finding["Filename"]].append(finding)
    return CfnLint(by_file[str(TEMPLATE)], by_file[str(bad)], result.returncode)


def test_cfn_lint_passes(cfn_lint: CfnLint) -> None:
    """cfn-lint reports no error, warning or informational finding on the template."""
    assert cfn_lint.template == [], json.dumps(cfn_lint.template, indent=1)


def test_cfn_lint_rejects_a_misspelled_property(cfn_lint: CfnLint) -> None:
    """cfn-lint bites: a misspelled container property fails it."""
    assert cfn_lint.returncode != 0
    assert any("StopTimout" in finding["Message"] for finding in cfn_lint.misspelled), (
        cfn_lint.misspelled
    )


def test_checkov_passes_on_the_template() -> None:
    """checkov finds nothing on the template, with no skip beyond those the docs justify."""
    report = checkov_json(CHECKOV_CONFIG, TEMPLATE)
    assert isinstance(report, dict), "one framework: cloudformation"
    assert report["check_type"] == "cloudformation"
    assert not checkov_failures(report)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 10
    skips = checkov_config_skips(CHECKOV_CONFIG)
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= skips
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    section = text.partition("checkov skips: ECS")[2]
    assert section, "docs/deployment.md has a 'checkov skips: ECS' section"
    for check_id in skips:
        assert f"`{check_id}`" in section, f"{check_id} skipped without a reason in the docs"


# === the task role ==============================================================================


def test_task_role_allows_exactly_what_the_code_calls(template: dict[str, Any]) -> None:
    """The task role's actions (with a key set, no customer-managed key) are those of the
    daemon's AWS calls, derived from its code."""
    code = daemon_aws_actions()
    assert code == set().union(*EXPECTED_GRANTS.values()), (
        "the daemon's AWS calls changed: update EXPECTED_GRANTS and the task role"
    )
    granted = {
        action
        for statement in task_role_statements(template)
        for action in as_list(statement["Action"])
    }
    assert granted == code


def test_task_role_grants_each_resource_only_its_actions(template: dict[str, Any]) -> None:
    """One statement per queue, stream and secret, each scoped to that ARN; no wildcard."""
    arns = {
        "QueueName": "arn:aws:sqs:eu-west-1:123456789012:submissions",
        "DeadLetterQueueName": "arn:aws:sqs:eu-west-1:123456789012:submissions-dlq",
        "StreamName": "arn:aws:kinesis:eu-west-1:123456789012:stream/events",
        "AuthKeysSecretArn": KEY_SET_ARN,
    }
    grants: dict[str, set[str]] = {}
    for statement in task_role_statements(template):
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement
        assert "NotResource" not in statement
        (arn,) = (resolve(template, r) for r in as_list(statement["Resource"]))
        grants.setdefault(arn, set()).update(as_list(statement["Action"]))
    assert grants == {arns[parameter]: actions for parameter, actions in EXPECTED_GRANTS.items()}
    policies = json.dumps(resource(template, "TaskRole")["Policies"])
    assert "*" not in policies, "no wildcard action or resource"


@pytest.mark.parametrize(
    ("parameter", "value", "actions"),
    [
        ("KmsKeyArn", KMS_KEY_ARN, {"kms:Decrypt", "kms:GenerateDataKey"}),
        ("AuthKeysSecretArn", KEY_SET_ARN, {"secretsmanager:GetSecretValue"}),
        ("AuthKeysKmsKeyArn", KMS_KEY_ARN, {"kms:Decrypt"}),
    ],
)
def test_optional_grant_follows_its_parameter(
    template: dict[str, Any], parameter: str, value: str, actions: set[str]
) -> None:
    """Set, the parameter gets one statement of exactly `actions` on it; empty, none at all."""
    pattern = template["Parameters"][parameter]["AllowedPattern"]
    assert re.fullmatch(pattern, value)
    assert re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, value[:-6] + "*"), "no wildcard can be deployed"
    for given, count in (("", 0), (value, 1)):
        deployed = {**AS_DEPLOYED, parameter: given}
        statements = [
            statement
            for statement in task_role_statements(template, deployed)
            if statement["Resource"] == {"Ref": parameter}
        ]
        assert len(statements) == count, (given, statements)
    (statement,) = statements
    assert set(as_list(statement["Action"])) == actions
    assert resolve(template, statement["Resource"], deployed) == value


def test_key_set_key_decrypts_only_for_secrets_manager(template: dict[str, Any]) -> None:
    """The key set's customer-managed key may decrypt only through Secrets Manager's calls."""
    deployed = {**AS_DEPLOYED, "AuthKeysKmsKeyArn": KMS_KEY_ARN}
    (statement,) = [
        s
        for s in task_role_statements(template, deployed)
        if s["Resource"] == {"Ref": "AuthKeysKmsKeyArn"}
    ]
    (via,) = statement["Condition"]["StringEquals"].values()
    assert resolve(template, via, deployed) == "secretsmanager.eu-west-1.amazonaws.com"


# === the container ==============================================================================


def test_container_stops_after_the_drain(template: dict[str, Any]) -> None:
    """stopTimeout exceeds SHUTDOWN_GRACE_SECONDS with room to close, within Fargate's 120 s."""
    grace = float(environment(template)["SHUTDOWN_GRACE_SECONDS"])
    assert grace == Settings().shutdown_grace_seconds
    stop_timeout = the_container(template)["StopTimeout"]
    assert grace + 10 <= stop_timeout <= FARGATE_MAX_STOP_TIMEOUT_S
    assert the_container(template)["Command"] == ["event-processor", "run"]


def test_container_is_locked_down(template: dict[str, Any]) -> None:
    """The image's non-root uid, read-only root with a scratch /tmp, no capabilities."""
    spec = the_container(template)
    assert spec["User"] == image_user()
    assert not spec["User"].startswith(("0", "root"))
    assert spec["ReadonlyRootFilesystem"] is True
    assert spec["LinuxParameters"]["Capabilities"] == {"Drop": ["ALL"]}
    assert "Privileged" not in spec
    (mount,) = spec["MountPoints"]
    assert mount["ContainerPath"] == CONTAINER_TMP
    volumes = {v["Name"] for v in resource(template, "TaskDefinition")["Volumes"]}
    assert mount["SourceVolume"] in volumes


def test_container_environment_is_valid_settings(template: dict[str, Any]) -> None:
    """Every variable is a daemon setting; the values validate; the port is the one served;
    the key set is the secret's ARN, in the default mode."""
    parsed = daemon_settings(environment(template))
    assert parsed.queue_url == "https://sqs.eu-west-1.amazonaws.com/123456789012/submissions"
    assert parsed.dlq_url == "https://sqs.eu-west-1.amazonaws.com/123456789012/submissions-dlq"
    assert parsed.metrics_port == Settings().metrics_port
    (port,) = the_container(template)["PortMappings"]
    assert port["ContainerPort"] == parsed.metrics_port
    assert parsed.auth_mode == AuthMode(template["Parameters"]["AuthMode"]["Default"])
    assert parsed.auth_keys_secret_id == KEY_SET_ARN
    assert parsed.auth_keys_refresh_seconds == Settings().auth_keys_refresh_seconds


def test_container_environment_without_a_key_set(template: dict[str, Any]) -> None:
    """With AuthMode off and no secret, AUTH_KEYS_SECRET_ID is left out and the rest validates."""
    env = environment(template, {"AuthMode": "off", "AuthKeysSecretArn": ""})
    assert "AUTH_KEYS_SECRET_ID" not in env
    parsed = daemon_settings(env)
    assert parsed.auth_mode is AuthMode.OFF
    assert not parsed.has_key_source


def test_auth_mode_rule_demands_a_key_set(template: dict[str, Any]) -> None:
    """The modes are the daemon's; the rule lets monitor and enforce deploy only with a secret."""
    modes = template["Parameters"]["AuthMode"]["AllowedValues"]
    assert modes == [mode.value for mode in AuthMode]
    rule = template["Rules"]["AuthModeNeedsKeySet"]
    (assertion,) = rule["Assertions"]
    for mode in modes:
        for secret in ("", KEY_SET_ARN):
            values = {"AuthMode": mode, "AuthKeysSecretArn": secret}
            applies = evaluate_rule(rule["RuleCondition"], values)
            deployable = not applies or evaluate_rule(assertion["Assert"], values)
            assert deployable is (mode == "off" or bool(secret)), values


@pytest.fixture
def healthz_port(request: pytest.FixtureRequest) -> Iterator[int]:
    handler: type[BaseHTTPRequestHandler] = request.param
    with serve_http(handler) as port:
        yield port


@pytest.mark.parametrize(
    ("healthz_port", "healthy"), [(Healthz, True), (Unhealthy, False)], indirect=["healthz_port"]
)
def test_health_check_probes_healthz(
    template: dict[str, Any], healthz_port: int, healthy: bool
) -> None:
    """The container health check passes on a 200 from /healthz on METRICS_PORT, fails otherwise."""
    check = the_container(template)["HealthCheck"]
    kind, program, *args = check["Command"]
    assert kind == "CMD"
    assert program == "python", "the image has no curl"
    env = {**os.environ, "METRICS_PORT": str(healthz_port)}
    result = run([sys.executable, *args], env=env)
    assert (result.returncode == 0) is healthy, result.stderr
    assert check["Timeout"] < check["Interval"]
    assert check["StartPeriod"] >= 30, "start-up checks the queue, DLQ and stream first"


def test_logs_go_to_cloudwatch(template: dict[str, Any]) -> None:
    """awslogs to the stack's log group (with retention), in this region, without blocking."""
    logging = the_container(template)["LogConfiguration"]
    assert logging["LogDriver"] == "awslogs"
    options = logging["Options"]
    assert options["awslogs-group"] == {"Ref": "LogGroup"}
    assert options["awslogs-region"] == {"Ref": "AWS::Region"}
    assert options["awslogs-stream-prefix"]
    assert options["mode"] == "non-blocking"
    assert resource(template, "LogGroup")["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert environment(template)["LOG_FORMAT"] == "json"


def test_task_size_fits_the_benchmark(template: dict[str, Any]) -> None:
    """Default task size: half a vCPU (the measured drain) and memory well above 116 MiB."""
    parameters = template["Parameters"]
    assert resource(template, "TaskDefinition")["Cpu"] == {"Ref": "TaskCpu"}
    assert resource(template, "TaskDefinition")["Memory"] == {"Ref": "TaskMemory"}
    assert parameters["TaskCpu"]["Default"] >= BENCH_CPU_UNITS
    assert parameters["TaskMemory"]["Default"] >= 2 * BENCH_PEAK_RSS_MIB


def evaluate_rule(condition: Any, values: dict[str, str]) -> bool:
    """A CloudFormation rule assertion (Or/And/Not/Equals on parameters), evaluated."""
    ((function, argument),) = condition.items()
    if function == "Fn::Or":
        return any(evaluate_rule(c, values) for c in argument)
    if function == "Fn::And":
        return all(evaluate_rule(c, values) for c in argument)
    if function == "Fn::Not":
        return not evaluate_rule(argument[0], values)
    if function == "Fn::Equals":
        left, right = (values[a["Ref"]] if isinstance(a, dict) else str(a) for a in argument)
        return left == right
    pytest.fail(f"unexpected rule function {function}")


def test_task_size_rule_allows_only_fargate_sizes(template: dict[str, Any]) -> None:
    """The template's rule accepts exactly the CPU/memory pairs Fargate offers, defaults included."""
    parameters = template["Parameters"]
    (assertion,) = template["Rules"]["FargateTaskSize"]["Assertions"]
    for cpu in parameters["TaskCpu"]["AllowedValues"]:
        for memory in parameters["TaskMemory"]["AllowedValues"]:
            values = {"TaskCpu": str(cpu), "TaskMemory": str(memory)}
            expected = memory in FARGATE_MEMORY[cpu]
            assert evaluate_rule(assertion["Assert"], values) is expected, values
    defaults = {name: str(parameters[name]["Default"]) for name in ("TaskCpu", "TaskMemory")}
    assert evaluate_rule(assertion["Assert"], defaults)


# === service and scaling ========================================================================


def test_service_is_private_and_rolls_safely(template: dict[str, Any]) -> None:
    """No public IP, HTTPS-only egress, new tasks before old ones stop, automatic rollback."""
    service = resource(template, "Service")
    assert service["LaunchType"] == "FARGATE"
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    deployment = service["DeploymentConfiguration"]
    assert deployment["MinimumHealthyPercent"] == 100
    assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    group = resource(template, "TaskSecurityGroup")
    rules = [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["SecurityGroupEgress"]]
    assert rules == [("tcp", 443, 443)]
    assert "SecurityGroupIngress" not in group
    ingress = resource(template, "PrometheusIngress")
    assert template["Resources"]["PrometheusIngress"]["Condition"] == "HasPrometheus"
    assert ingress["FromPort"] == ingress["ToPort"] == Settings().metrics_port


def test_scaling_tracks_backlog_per_task(template: dict[str, Any]) -> None:
    """Target tracking on visible messages / running tasks, at the Kubernetes queueLength."""
    target = resource(template, "ScalableTarget")
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert target["MinCapacity"] == {"Ref": "MinTasks"}
    assert target["MaxCapacity"] == {"Ref": "MaxTasks"}
    policy = resource(template, "BacklogPerTaskScaling")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["ScalingTargetId"] == {"Ref": "ScalableTarget"}
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in config["CustomizedMetricSpecification"]["Metrics"]}
    returned = [m for m in metrics.values() if m.get("ReturnData")]
    (result,) = returned
    numerator, denominator = (part.strip() for part in result["Expression"].split("/"))
    visible = metrics[numerator]["MetricStat"]["Metric"]
    assert (visible["Namespace"], visible["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert visible["Dimensions"] == [{"Name": "QueueName", "Value": {"Ref": "QueueName"}}]
    running = metrics[denominator]["MetricStat"]["Metric"]
    assert (running["Namespace"], running["MetricName"]) == (
        "ECS/ContainerInsights",
        "RunningTaskCount",
    )
    assert {d["Name"]: d["Value"] for d in running["Dimensions"]} == {
        "ClusterName": {"Ref": "ClusterName"},
        "ServiceName": {"Fn::GetAtt": ["Service", "Name"]},
    }
    assert config["TargetValue"] == {"Ref": "BacklogPerTaskTarget"}
    assert config["ScaleInCooldown"] > config["ScaleOutCooldown"]
    scaled = load_yaml(K8S_SCALEDOBJECT)
    (trigger,) = scaled["spec"]["triggers"]
    default = template["Parameters"]["BacklogPerTaskTarget"]["Default"]
    assert default == int(trigger["metadata"]["queueLength"]), "same arithmetic as KEDA"
    assert trigger["metadata"]["scaleOnInFlight"] == "false", "both count visible messages only"
