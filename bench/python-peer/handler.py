"""A Python/boto3 peer of skewguard's three hook functions, for the cold-start comparison in
bench/run (docs/benchmarks.md). Not part of skewguard.

It runs the forward path of a BLUE_GREEN or CANARY deployment in hold mode with the same AWS
calls, in the same order, as the Rust hooks make in steady state (a service's first deployment
pins blue the same way):

- post_test_traffic: PRE_SCALE_UP / RECONCILE_SERVICE (Query; DescribeRules when anything is in
  play) and POST_TEST_TRAFFIC_SHIFT (DescribeServiceRevisions, DescribeTaskDefinition,
  DescribeServiceDeployments, Query, TransactWriteItems);
- production_shift: TEST_TRAFFIC_SHIFT forward (no call) and PRODUCTION_TRAFFIC_SHIFT forward
  (Query, DescribeRules, CreateRule, UpdateItem);
- post_shift: POST_PRODUCTION_TRAFFIC_SHIFT (start of the hold: Query, TransactWriteItems; each
  poll: Query; end: Query, DescribeRules, DeleteRule, UpdateItem).

It keeps a ledger in the same shape (one item per deployment, history inline) in a table of
its own. It does not implement rollbacks, retries from a fresh read, late or repeated calls,
settings other than skewWindow/pollInterval, cookie or query-string pins, priority ranges,
error classification or metrics: it is what a careful first version in Python would be, to
show what the runtime costs, not a second implementation of skewguard.
"""

import json
import os
import time
from datetime import datetime, timedelta, timezone

import boto3

TABLE = os.environ.get("SKEWGUARD_TABLE", "skewguard-ledger")
HEADER = "X-Deployment-ID"
FINAL = ("retired", "rolled_back", "superseded")
ENTRY_ATTRIBUTES = [
    "serviceArn", "deploymentId", "status", "targetGroupArn", "serviceRevisionArn",
    "taskDefinitionArn", "listenerArn", "productionRuleArn", "ruleArns", "createdAt",
    "updatedAt", "shiftedAt", "liveAt", "drainUntil", "supersededBy", "retiredAt", "expiresAt",
    "lastError", "reason", "version",
]

# Built once per cold start, as the Rust functions build their SDK clients.
ecs = boto3.client("ecs")
elbv2 = boto3.client("elbv2")
dynamodb = boto3.client("dynamodb")


def now():
    return datetime.now(timezone.utc)


def stamp(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(text, default):
    if not text:
        return default
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]]


def settings(event):
    details = event.get("hookDetails") or {}
    if isinstance(details, str):
        details = json.loads(details)
    return (
        duration(details.get("skewWindow"), 3600),
        duration(details.get("pollInterval"), 60),
    )


# ---------------------------------------------------------------- the ledger


def plain(value):
    kind, inner = next(iter(value.items()))
    if kind == "N":
        return int(inner)
    if kind == "L":
        return [plain(v) for v in inner]
    return inner


def load(service_arn):
    names = {f"#a{i}": a for i, a in enumerate(ENTRY_ATTRIBUTES)}
    entries, start = [], None
    while True:
        args = dict(
            TableName=TABLE,
            ConsistentRead=True,
            KeyConditionExpression="#a0 = :pk",
            ExpressionAttributeValues={":pk": {"S": service_arn}},
            ExpressionAttributeNames=names,
            ProjectionExpression=", ".join(names),
        )
        if start:
            args["ExclusiveStartKey"] = start
        page = dynamodb.query(**args)
        entries += [{k: plain(v) for k, v in item.items()} for item in page["Items"]]
        start = page.get("LastEvaluatedKey")
        if not start:
            return entries


def history(event, change):
    return {"M": {
        "at": {"S": stamp(now())},
        "stage": {"S": event["lifecycleStage"]},
        "executionId": {"S": event["executionId"]},
        "change": {"S": change},
    }}


def update(entry, event, change, **fields):
    """An Update of one entry: the fields, a history record, version + 1, conditional on the
    version read."""
    names, values, sets = {"#v": "version", "#h": "history", "#u": "updatedAt"}, {}, []
    for i, (name, value) in enumerate(fields.items()):
        names[f"#f{i}"] = name
        if isinstance(value, list):
            values[f":f{i}"] = {"L": [{"S": v} for v in value]}
        else:
            values[f":f{i}"] = {"S": value}
        sets.append(f"#f{i} = :f{i}")
    values.update({
        ":u": {"S": stamp(now())},
        ":h": {"L": [history(event, change)]},
        ":one": {"N": "1"},
        ":seen": {"N": str(entry["version"])},
    })
    return dict(
        TableName=TABLE,
        Key={"serviceArn": {"S": entry["serviceArn"]}, "deploymentId": {"S": entry["deploymentId"]}},
        UpdateExpression="SET " + ", ".join(sets + ["#u = :u", "#h = list_append(#h, :h)", "#v = #v + :one"]),
        ConditionExpression="#v = :seen",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def new_entry(service_arn, version, status, event, change):
    t = stamp(now())
    item = {
        "serviceArn": {"S": service_arn},
        "deploymentId": {"S": version["deploymentId"]},
        "status": {"S": status},
        "targetGroupArn": {"S": version["targetGroupArn"]},
        "serviceRevisionArn": {"S": version["serviceRevisionArn"]},
        "taskDefinitionArn": {"S": version["taskDefinitionArn"]},
        "listenerArn": {"S": version["listenerArn"]},
        "productionRuleArn": {"S": version["productionRuleArn"]},
        "ruleArns": {"L": [{"S": r} for r in version.get("ruleArns", [])]},
        "createdAt": {"S": t},
        "updatedAt": {"S": t},
        "version": {"N": "1"},
        "history": {"L": [history(event, change)]},
    }
    return {"Put": {
        "TableName": TABLE,
        "Item": item,
        "ConditionExpression": "attribute_not_exists(serviceArn)",
    }}


# ---------------------------------------------------------------- ECS and the listener


def describe_version(revision_arn):
    """The deployment ID (the container's DEPLOYMENT_ID), target group and listener of a
    revision."""
    revision = ecs.describe_service_revisions(serviceRevisionArns=[revision_arn])["serviceRevisions"][0]
    resolved = (revision.get("resolvedConfiguration") or {}).get("loadBalancers") or []
    configured = revision.get("loadBalancers") or []
    rule = next(
        (lb["productionListenerRule"] for lb in resolved if lb.get("productionListenerRule")),
        None,
    ) or configured[0]["advancedConfiguration"]["productionListenerRule"]
    target_group = resolved[0]["targetGroupArn"] if resolved else configured[0]["targetGroupArn"]
    task_definition = ecs.describe_task_definition(taskDefinition=revision["taskDefinition"])["taskDefinition"]
    container = next(
        (c for c in task_definition["containerDefinitions"]
         if configured and c["name"] == configured[0].get("containerName")),
        task_definition["containerDefinitions"][0],
    )
    deployment_id = next(e["value"] for e in container.get("environment", []) if e["name"] == "DEPLOYMENT_ID")
    return {
        "deploymentId": deployment_id,
        "targetGroupArn": target_group,
        "serviceRevisionArn": revision_arn,
        "taskDefinitionArn": task_definition["taskDefinitionArn"],
        "productionRuleArn": rule,
        "listenerArn": rule.replace(":listener-rule/", ":listener/").rsplit("/", 1)[0],
    }


def rules_of(listener_arn):
    rules, marker = [], None
    while True:
        args = {"ListenerArn": listener_arn}
        if marker:
            args["Marker"] = marker
        page = elbv2.describe_rules(**args)
        rules += page["Rules"]
        marker = page.get("NextMarker")
        if not marker:
            return rules


def pin(service_arn, version, rules):
    """Creates the pin of `version`: the production rule's conditions plus the header, at the
    first free priority before the production rule, tagged like skewguard's pins."""
    production = next(r for r in rules if r["RuleArn"] == version["productionRuleArn"])
    taken = {int(r["Priority"]) for r in rules if r["Priority"] != "default"}
    priority = next(p for p in range(int(production["Priority"]) - 1, 0, -1) if p not in taken)
    conditions = [
        {k: v for k, v in c.items() if k != "Values" or len(c) == 2} for c in production["Conditions"]
    ]
    conditions.append({"Field": "http-header", "HttpHeaderConfig": {
        "HttpHeaderName": HEADER, "Values": [version["deploymentId"]]}})
    created = elbv2.create_rule(
        ListenerArn=version["listenerArn"],
        Priority=priority,
        Conditions=conditions,
        Actions=[{"Type": "forward", "TargetGroupArn": version["targetGroupArn"]}],
        Tags=[
            {"Key": "skewguard:service", "Value": service_arn},
            {"Key": "skewguard:deployment-id", "Value": version["deploymentId"]},
        ],
    )
    return created["Rules"][0]["RuleArn"]


# ---------------------------------------------------------------- the hooks


def answer(status, delay=None, event=None):
    out = {"hookStatus": status}
    if delay is not None:
        out["callBackDelay"] = delay
        out["hookDetails"] = event.get("hookDetails") or {}
    return out


def green_weight(event, key):
    green = event["executionDetails"]["targetServiceRevisionArn"]
    weights = event["executionDetails"].get(key) or {}
    return weights.get(green)


def post_test_traffic(event, context):
    stage = event["lifecycleStage"]
    service_arn = event["executionDetails"]["serviceArn"]
    if stage in ("PRE_SCALE_UP", "RECONCILE_SERVICE"):
        entries = load(service_arn)
        in_play = [e for e in entries if e["status"] not in FINAL]
        if in_play:
            rules = rules_of(in_play[0]["listenerArn"])
            production = next((r for r in rules if r["RuleArn"] == in_play[0]["productionRuleArn"]), None)
            incoming = [
                t["TargetGroupArn"]
                for a in (production or {}).get("Actions", [])
                for t in (a.get("ForwardConfig") or {}).get("TargetGroups", [])
                if t.get("Weight", 1) == 0
            ]
            # A pin into the group green scales up into would be removed here; in steady state
            # there is none.
            assert not any(
                [a.get("TargetGroupArn") for a in r["Actions"]] == [tg]
                for r in rules for tg in incoming
            ), "a pin leads into the incoming target group (not implemented by the peer)"
        return answer("SUCCEEDED")
    green = describe_version(event["executionDetails"]["targetServiceRevisionArn"])
    deployment = ecs.describe_service_deployments(serviceDeploymentArns=[event["resourceArn"]])
    sources = deployment["serviceDeployments"][0].get("sourceServiceRevisions") or []
    entries = load(service_arn)
    actions = [new_entry(service_arn, green, "testing", event,
                         f"recorded as testing on target group {green['targetGroupArn']}")]
    blue_revision = sources[0]["arn"] if sources else None
    blue = next((e for e in entries if e["serviceRevisionArn"] == blue_revision), None)
    if blue is not None:
        actions.append({"Update": update(blue, event, "blue of the deployment being tested")})
    elif blue_revision:
        # The service's first deployment: blue is described and pinned too.
        version = describe_version(blue_revision)
        version["ruleArns"] = [pin(service_arn, version, rules_of(version["listenerArn"]))]
        actions.append(new_entry(service_arn, version, "live", event, "recorded as live (blue)"))
    dynamodb.transact_write_items(TransactItems=actions)
    return answer("SUCCEEDED")


def production_shift(event, context):
    stage = event["lifecycleStage"]
    if stage == "TEST_TRAFFIC_SHIFT":
        # Forward test traffic needs no pin; the peer implements no rollback.
        return answer("SUCCEEDED")
    service_arn = event["executionDetails"]["serviceArn"]
    entries = load(service_arn)
    green_revision = event["executionDetails"]["targetServiceRevisionArn"]
    green = next(e for e in entries if e["serviceRevisionArn"] == green_revision)
    if green.get("ruleArns"):
        return answer("SUCCEEDED")  # a later canary step: pinned already
    rules = rules_of(green["listenerArn"])
    rule_arn = pin(service_arn, green, rules)
    dynamodb.update_item(**update(green, event, "production traffic shifted to it; pinned",
                                  ruleArns=[rule_arn], shiftedAt=stamp(now())))
    return answer("SUCCEEDED")


def post_shift(event, context):
    window, poll = settings(event)
    service_arn = event["executionDetails"]["serviceArn"]
    entries = load(service_arn)
    green_revision = event["executionDetails"]["targetServiceRevisionArn"]
    green = next(e for e in entries if e["serviceRevisionArn"] == green_revision)
    if green["status"] == "testing":
        # Start of the hold: green live, the previous live version draining for the window.
        drain_until = stamp(now() + timedelta(seconds=window))
        actions = [{"Update": update(green, event, "testing -> live", status="live", liveAt=stamp(now()))}]
        for blue in (e for e in entries if e["status"] == "live"):
            actions.append({"Update": update(blue, event, "live -> draining", status="draining",
                                             drainUntil=drain_until, supersededBy=green["deploymentId"])})
        dynamodb.transact_write_items(TransactItems=actions)
        return answer("IN_PROGRESS", poll, event) if len(actions) > 1 else answer("SUCCEEDED")
    draining = [e for e in entries if e["status"] == "draining"]
    if any(e["drainUntil"] > stamp(now()) for e in draining):
        return answer("IN_PROGRESS", poll, event)
    for blue in draining:
        rules = rules_of(blue["listenerArn"])
        for rule in rules:
            if rule["RuleArn"] in blue.get("ruleArns", []):
                elbv2.delete_rule(RuleArn=rule["RuleArn"])
        expires = str(int(time.time()) + 30 * 86400)
        request = update(blue, event, "draining -> retired: skew window over, pins removed",
                         status="retired", retiredAt=stamp(now()), ruleArns=[])
        request["UpdateExpression"] += ", #exp = :exp"
        request["ExpressionAttributeNames"]["#exp"] = "expiresAt"
        request["ExpressionAttributeValues"][":exp"] = {"N": expires}
        dynamodb.update_item(**request)
    return answer("SUCCEEDED")
