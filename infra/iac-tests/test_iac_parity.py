"""The three ways to deploy skewguard grant the same IAM permissions and create the same alarms.

infra/template.yaml (read here, so it cannot drift), the Terraform module (infra/terraform, as
parsed by infra/terraform/check) and the CDK construct (infra/cdk, synthesized alone) are each
normalised to a set of (role, effect, action, resource, condition) for the same inputs: the
listeners and the cluster of skewguard_infra's samples. References to the ledger, the log groups,
the functions, the dead-letter queue and the sweep queue become names (table, log-group:<crate>:*, …).

Run by infra/check-iac, which writes the Terraform JSON and the CDK template to
$SKEWGUARD_IAC_OUT first.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import skewguard_infra as infra  # noqa: E402

CRATES = ("post-test-traffic", "production-shift", "post-shift", "reconciler")
REGION, ACCOUNT, PARTITION = "eu-west-1", "123456789012", "aws"


def out_dir() -> Path:
    value = os.environ.get("SKEWGUARD_IAC_OUT")
    if not value:
        pytest.fail("SKEWGUARD_IAC_OUT is not set: run infra/check-iac")
    return Path(value)


Grant = tuple[str, str, str, str, frozenset]


def grants(role: str, statements: list[dict], canon) -> set[Grant]:
    found = set()
    for st in statements:
        cond = frozenset(
            (op, key, tuple(sorted(str(v) for v in infra.as_list(vals))))
            for op, tests in (st.get("Condition") or {}).items()
            for key, vals in tests.items()
        )
        for action in infra.as_list(st["Action"]):
            for resource in infra.as_list(st["Resource"]):
                found.add((role, st.get("Effect", "Allow"), action, canon(resource), cond))
    return found


# ------------------------------------------------------------------------------ CloudFormation


def cfn_grants(template: dict, role_name, target_name) -> set[Grant]:
    """Role and policy resources of a CloudFormation template (SAM or CDK output)."""
    ev = infra.Evaluator(template, **infra.SAMPLE_PARAMETERS) if "Parameters" in template else infra.Evaluator(template)
    resources = template["Resources"]

    def canon(value: Any) -> str:
        text = str(value)
        m = re.fullmatch(r"getatt:([^.]+)\.Arn", text)
        return target_name(m.group(1)) if m else text

    found: set[Grant] = set()
    for logical, res in resources.items():
        if res["Type"] != "AWS::IAM::Role":
            continue
        role = role_name(logical)
        if role is None:
            continue
        props = ev(res["Properties"])
        docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        for ref in props.get("ManagedPolicyArns", []):
            assert str(ref).startswith("ref:"), f"{logical}: managed policy {ref} is not one of the template's"
            docs.append(ev(resources[ref[4:]]["Properties"]["PolicyDocument"]))
        for other, pol in resources.items():
            if pol["Type"] == "AWS::IAM::Policy" and f"ref:{logical}" in ev(pol["Properties"]).get("Roles", []):
                docs.append(ev(pol["Properties"]["PolicyDocument"]))
        for doc in docs:
            found |= grants(role, infra.as_list(doc["Statement"]), canon)
    return found


def sam_grants() -> set[Grant]:
    template = infra.load(infra.TEMPLATE)
    res = template["Resources"]
    role_of_function = {}
    for logical, r in res.items():
        if r["Type"] == "AWS::Serverless::Function":
            role_of_function[r["Properties"]["Role"]["Fn::GetAtt"][0]] = Path(r["Properties"]["CodeUri"]).name
    names = {}
    for logical, r in res.items():
        if r["Type"] == "AWS::Serverless::Function":
            names[logical] = f"function:{Path(r['Properties']['CodeUri']).name}"
            group = r["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
            names[group] = f"log-group:{Path(r['Properties']['CodeUri']).name}:*"
        elif r["Type"] == "AWS::DynamoDB::Table":
            names[logical] = "table"
        elif r["Type"] == "AWS::SQS::Queue":
            names[logical] = "sweep-queue" if logical == "SweepQueue" else "dead-letter-queue"

    def role_name(logical):
        if logical in role_of_function:
            return role_of_function[logical]
        return "hook-invoke" if logical == "HookInvokeRole" else f"unknown role {logical}"

    return cfn_grants(template, role_name, lambda logical: names.get(logical, f"getatt:{logical}"))


def cdk_grants() -> set[Grant]:
    template = json.loads((out_dir() / "cdk-parity.template.json").read_text())
    res = template["Resources"]
    path = {k: r.get("Metadata", {}).get("aws:cdk:path", "") for k, r in res.items()}

    def role_name(logical):
        p = path[logical]
        for crate in CRATES:
            if p == f"skewguard/Skewguard/{crate}/Role/Resource":
                return crate
        return "hook-invoke" if p == "skewguard/Skewguard/HookInvokeRole/Resource" else f"unknown role {p}"

    def target_name(logical):
        p = path.get(logical, "")
        for crate in CRATES:
            if p == f"skewguard/Skewguard/{crate}/LogGroup/Resource":
                return f"log-group:{crate}:*"
            if p == f"skewguard/Skewguard/{crate}/Function/Resource":
                return f"function:{crate}"
        if p == "skewguard/Skewguard/Ledger/Resource":
            return "table"
        if p == "skewguard/Skewguard/ReconcilerDeadLetters/Resource":
            return "dead-letter-queue"
        if p == "skewguard/Skewguard/SweepQueue/Resource":
            return "sweep-queue"
        return f"getatt:{logical}"

    return cfn_grants(template, role_name, target_name)


# ------------------------------------------------------------------------------ Terraform


class Hcl:
    """Evaluates the expressions the module's policies use: templates, var/local/data/resource
    references, lists, replace() and one-variable for-expressions. Anything else is an error, so
    the test fails rather than guesses."""

    def __init__(self, module: dict):
        self.module = module
        self.locals = {k: v for block in module.get("locals", []) for k, v in block.items()}
        self.vars = {
            "listener_arns": list(infra.SAMPLE_LISTENERS),
            "cluster_name": infra.SAMPLE_CLUSTER,
            "restrict_deletes_to_skewguard_rules": True,
        }

    def value(self, node: Any, env: dict | None = None) -> Any:
        env = env or {}
        if isinstance(node, list):
            out = []
            for item in node:
                v = self.value(item, env)
                out.extend(v if isinstance(v, list) and isinstance(item, str) and _whole(item) else [v])
            return out
        if isinstance(node, bool) or not isinstance(node, str):
            return node
        if _whole(node):
            return self.expr(node[2:-1].strip(), env)
        return _interpolate(node, lambda e: str(self.expr(e, env)))

    def expr(self, e: str, env: dict) -> Any:
        e = e.strip()
        if m := re.fullmatch(r'\[for (\w+) in (.+?) : (".*")\]', e, re.S):
            name, source, body = m.groups()
            return [self.expr(body, {**env, name: item}) for item in self.expr(source, env)]
        if m := re.fullmatch(r'(.+?) \? \[1\] : \[\]', e):
            return [1] if self.expr(m.group(1), env) else []
        if e.startswith('"') and e.endswith('"'):
            return _interpolate(json.loads(e) if "${" not in e else e[1:-1], lambda x: str(self.expr(x, env)))
        if m := re.fullmatch(r'replace\((\w+), "([^"]*)", "([^"]*)"\)', e):
            return str(self.expr(m.group(1), env)).replace(m.group(2), m.group(3))
        if e in env:
            return env[e]
        if m := re.fullmatch(r"var\.(\w+)", e):
            return self.vars[m.group(1)]
        if m := re.fullmatch(r"local\.(\w+)", e):
            return self.value(self.locals[m.group(1)], env)
        fixed = {
            "data.aws_partition.current.partition": PARTITION,
            "data.aws_region.current.region": REGION,
            "data.aws_caller_identity.current.account_id": ACCOUNT,
            "aws_dynamodb_table.ledger.arn": "table",
            "aws_sqs_queue.reconciler_dead_letters.arn": "dead-letter-queue",
            "aws_sqs_queue.sweep.arn": "sweep-queue",
        }
        if e in fixed:
            return fixed[e]
        if m := re.fullmatch(r'aws_cloudwatch_log_group\.function\["([\w-]+)"\]\.arn', e):
            return f"log-group:{m.group(1)}"
        if m := re.fullmatch(r'aws_lambda_function\.function\["([\w-]+)"\]\.arn', e):
            return f"function:{m.group(1)}"
        if m := re.fullmatch(r"data\.aws_iam_policy_document\.(\w+)\.json", e):
            return self.document(m.group(1))
        raise AssertionError(f"the parity test cannot evaluate the Terraform expression {e!r}: keep policy expressions simple")

    def document(self, name: str) -> list[dict]:
        (doc,) = self.module["data"]["aws_iam_policy_document"][name]
        statements = []
        for st in doc.get("statement", []):
            conditions = list(st.get("condition", []))
            for dyn in st.get("dynamic", {}).get("condition", []):
                for _ in self.value(dyn["for_each"]):
                    conditions.extend(dyn["content"])
            cond: dict = {}
            for c in conditions:
                cond.setdefault(self.value(c["test"]), {})[self.value(c["variable"])] = self.value(c["values"])
            statements.append({
                "Effect": st.get("effect", "Allow"),
                "Action": self.value(st["actions"]),
                "Resource": self.value(st["resources"]),
                **({"Condition": cond} if cond else {}),
            })
        return statements


def _whole(s: str) -> bool:
    return s.startswith("${") and s.endswith("}") and _interpolations(s) == [(0, len(s))]


def _interpolations(s: str) -> list[tuple[int, int]]:
    spans, i = [], 0
    while (start := s.find("${", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(s):
            depth += s[j] == "{"
            depth -= s[j] == "}"
            if depth == 0:
                break
            j += 1
        spans.append((start, j + 1))
        i = j + 1
    return spans


def _interpolate(s: str, ev) -> str:
    out, last = [], 0
    for a, b in _interpolations(s):
        out += [s[last:a], ev(s[a + 2:b - 1])]
        last = b
    return "".join(out + [s[last:]])


def terraform_grants() -> set[Grant]:
    module = json.loads((out_dir() / "terraform" / "module.json").read_text())
    hcl = Hcl(module)
    found: set[Grant] = set()
    resources = module["resource"]
    canon = lambda r: f"{r}:*" if False else r  # noqa: E731 (resources are already names)
    # Function roles: their own policy, the shared policies attached to every function role and
    # those attached to one function's role.
    (role,) = resources["aws_iam_role"]["function"]
    assert role["for_each"] == "${local.functions}"
    own = hcl.locals["function_policies"]
    for crate in CRATES:
        found |= grants(crate, hcl.value(own[crate]), canon)
    for name, (attachment,) in resources.get("aws_iam_role_policy_attachment", {}).items():
        if "for_each" in attachment:
            assert attachment["for_each"] == "${aws_iam_role.function}", f"attachment {name} is not for every function role"
            assert attachment["role"] == "${each.value.name}", f"attachment {name}: role {attachment['role']}"
            crates = CRATES
        else:
            one = re.fullmatch(r'\$\{aws_iam_role\.function\["([\w-]+)"\]\.name\}', attachment["role"])
            assert one and one.group(1) in CRATES, f"attachment {name}: role {attachment['role']} is not one function's role"
            crates = (one.group(1),)
        m = re.fullmatch(r"\$\{aws_iam_policy\.(\w+)\.arn\}", attachment["policy_arn"])
        (policy,) = resources["aws_iam_policy"][m.group(1)]
        for crate in crates:
            found |= grants(crate, hcl.value(policy["policy"]), canon)
    (inline,) = resources["aws_iam_role_policy"]["function"]
    assert inline["policy"] == "${local.function_policies[each.key]}" and inline["role"] == "${aws_iam_role.function[each.key].id}"
    (invoke,) = resources["aws_iam_role_policy"]["hook_invoke"]
    assert invoke["role"] == "${aws_iam_role.hook_invoke.id}"
    found |= grants("hook-invoke", hcl.value(invoke["policy"]), canon)
    # Log group ARNs: the Terraform attribute has no ":*"; the statements add it, as GetAtt has it.
    return found


def _show(only: set[Grant]) -> str:
    return "\n".join(f"  {g[0]}: {g[1]} {g[2]} on {g[3]} if {sorted(g[4])}" for g in sorted(only, key=str)) or "  (none)"


def test_the_sam_side_is_read_from_the_template():
    sam = sam_grants()
    assert {g[0] for g in sam} == {*CRATES, "hook-invoke"}
    assert not [g for g in sam if "unknown" in g[0] or g[3].startswith("getatt:")], _show(sam)


@pytest.mark.parametrize("name, other", [("Terraform", terraform_grants), ("CDK", cdk_grants)])
def test_same_grants_as_the_sam_template(name, other):
    sam, theirs = sam_grants(), other()
    assert sam == theirs, (
        f"{name} and infra/template.yaml grant different permissions\n"
        f"only in the SAM template:\n{_show(sam - theirs)}\nonly in {name}:\n{_show(theirs - sam)}"
    )


# ------------------------------------------------------------------------------ alarms

# An alarm, normalised: (name suffix, namespace, metric, dimensions, statistic, period, threshold,
# comparison, missing data, the expression that sums them or None).
Alarm = tuple


def _alarm_of_metrics(suffix, metrics, stat, period, threshold, comparison, missing, expression):
    return (suffix, frozenset(metrics), stat, int(period), float(threshold), comparison, missing, expression)


def _cfn_alarms(template: dict, ev) -> set[Alarm]:
    found = set()
    for res in template["Resources"].values():
        if res["Type"] != "AWS::CloudWatch::Alarm" or "Namespace" in res["Properties"] and res["Properties"]["Namespace"] == "AWS/SQS":
            continue
        p = res["Properties"]
        name = json.dumps(p["AlarmName"])
        suffix = next(s for s in ("hook-failed", "drift-repaired", "pin-removed-by-reconciler") if s in name)
        if "Metrics" in p:
            stats = [m["MetricStat"] for m in p["Metrics"] if "MetricStat" in m]
            metrics = {(s["Metric"]["Namespace"], s["Metric"]["MetricName"], frozenset((d["Name"], d["Value"]) for d in s["Metric"]["Dimensions"])) for s in stats}
            expression = next(m["Expression"] for m in p["Metrics"] if "Expression" in m)
            found.add(_alarm_of_metrics(suffix, metrics, stats[0]["Stat"], stats[0]["Period"], p["Threshold"], p["ComparisonOperator"], p["TreatMissingData"], expression))
        else:
            metric = (p["Namespace"], p["MetricName"], frozenset((d["Name"], d["Value"]) for d in p["Dimensions"]))
            found.add(_alarm_of_metrics(suffix, {metric}, p["Statistic"], p["Period"], p["Threshold"], p["ComparisonOperator"], p["TreatMissingData"], None))
    return found


def sam_alarms() -> set[Alarm]:
    return _cfn_alarms(infra.load(infra.TEMPLATE), None)


def cdk_alarms() -> set[Alarm]:
    return _cfn_alarms(json.loads((out_dir() / "cdk-parity.template.json").read_text()), None)


def terraform_alarms() -> set[Alarm]:
    module = json.loads((out_dir() / "terraform" / "module.json").read_text())
    found = set()
    for key, blocks in module["resource"]["aws_cloudwatch_metric_alarm"].items():
        a = blocks[0]
        if a.get("namespace") == "AWS/SQS":
            continue
        suffix = a["alarm_name"].removeprefix("${var.name}-")
        if "metric_query" in a:
            queries = a["metric_query"]
            expression = next(q["expression"] for q in queries if "expression" in q)
            dynamic = a["dynamic"][0] if isinstance(a["dynamic"], list) else a["dynamic"]
            dynamic = dynamic["metric_query"][0]
            metric = dynamic["content"][0]["metric"][0]
            assert metric["dimensions"] == {"Function": "${metric_query.value}"}, metric
            functions = list(dynamic["for_each"].values())
            metrics = {(metric["namespace"], metric["metric_name"], frozenset({("Function", f)})) for f in functions}
            found.add(_alarm_of_metrics(suffix, metrics, metric["stat"], metric["period"], a["threshold"], a["comparison_operator"], a["treat_missing_data"], expression))
        else:
            m = (a["namespace"], a["metric_name"], frozenset(a["dimensions"].items()))
            found.add(_alarm_of_metrics(suffix, {m}, a["statistic"], a["period"], a["threshold"], a["comparison_operator"], a["treat_missing_data"], None))
    return found


def test_the_three_alarms_are_read_from_the_template():
    assert {a[0] for a in sam_alarms()} == {"hook-failed", "drift-repaired", "pin-removed-by-reconciler"}


@pytest.mark.parametrize("name,other", [("terraform", terraform_alarms), ("cdk", cdk_alarms)])
def test_same_alarms_as_the_sam_template(name, other):
    assert other() == sam_alarms(), name
