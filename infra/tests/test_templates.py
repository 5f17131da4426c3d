"""What the linters cannot check in infra/template.yaml and infra/example-service.yaml.

The real templates must give no problem; each deliberately broken copy must give at least one,
naming what is wrong. Run with the project venv: .venv/bin/python -m pytest infra/tests
"""

from __future__ import annotations

import copy
from typing import Callable

import pytest

import skewguard_infra as sg


@pytest.fixture(scope="module")
def template() -> dict:
    return sg.load(sg.TEMPLATE)


@pytest.fixture(scope="module")
def example() -> dict:
    return sg.load(sg.EXAMPLE)


# ------------------------------------------------------------------------ the real templates


@pytest.mark.parametrize("check", sg.TEMPLATE_CHECKS, ids=lambda c: c.__name__)
def test_template_is_clean(template, check):
    assert check(template) == []


@pytest.mark.parametrize("check", sg.EXAMPLE_CHECKS, ids=lambda c: c.__name__)
def test_example_is_clean(example, check):
    assert check(example) == []


def test_example_hooks_are_wired_to_the_template(example, template):
    assert sg.check_service_hooks(example, template) == []


def test_the_template_builds_every_hook_and_the_reconciler(template):
    by_crate, problems = sg.functions_by_crate(template)
    assert problems == []
    assert sorted(by_crate) == sorted(sg.FUNCTIONS)


def test_listener_rule_patterns_follow_the_listeners():
    assert sg.listener_rule_patterns(
        ["arn:aws:elasticloadbalancing:us-west-2:123456789012:listener/app/my-lb/50dc6c495c0c9188/f2f7dc8efc522ab2"]
    ) == ["arn:aws:elasticloadbalancing:us-west-2:123456789012:listener-rule/app/my-lb/50dc6c495c0c9188/f2f7dc8efc522ab2/*"]


def test_durations():
    assert sg.parse_duration_minutes("1h") == 60
    assert sg.parse_duration_minutes("90s") == 1.5
    assert sg.parse_duration_minutes("1h30m") == 90
    with pytest.raises(ValueError):
        sg.parse_duration_minutes("1 hour")


# ------------------------------------------------------------------------ broken copies


def _hook(example: dict, crate: str) -> dict:
    hooks = example["Resources"]["Service"]["Properties"]["DeploymentConfiguration"]["LifecycleHooks"]
    for hook in hooks:
        if hook["HookTargetArn"]["Fn::ImportValue"]["Fn::Sub"].endswith(
            {"post-test-traffic": "PostTestTrafficFunctionArn", "production-shift": "ProductionShiftFunctionArn", "post-shift": "PostShiftFunctionArn"}[crate]
        ):
            return hook
    raise AssertionError(f"no {crate} hook")


def _statements(template: dict, policy: str) -> list:
    return template["Resources"][policy]["Properties"]["PolicyDocument"]["Statement"]


def _invoke_statement(template: dict) -> dict:
    return template["Resources"]["HookInvokeRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]


def _set_strategy_rolling(example, template):
    example["Resources"]["Service"]["Properties"]["DeploymentConfiguration"]["Strategy"] = "ROLLING"


def _post_shift_timeout_below_window(example, template):
    _hook(example, "post-shift")["TimeoutConfiguration"]["TimeoutInMinutes"] = 30


def _post_shift_timeout_missing(example, template):
    del _hook(example, "post-shift")["TimeoutConfiguration"]


def _mapping_timeout_too_short(example, template):
    example["Mappings"]["SkewWindows"]["4h"]["HookTimeoutMinutes"] = 250


def _post_shift_at_the_production_shift(example, template):
    _hook(example, "post-shift")["LifecycleStages"] = ["PRODUCTION_TRAFFIC_SHIFT"]


def _production_shift_without_test_traffic_stage(example, template):
    _hook(example, "production-shift")["LifecycleStages"] = ["PRODUCTION_TRAFFIC_SHIFT"]


def _hooks_swapped(example, template):
    a, b = _hook(example, "post-shift"), _hook(example, "post-test-traffic")
    a["HookTargetArn"], b["HookTargetArn"] = b["HookTargetArn"], a["HookTargetArn"]


def _hook_missing(example, template):
    hooks = example["Resources"]["Service"]["Properties"]["DeploymentConfiguration"]["LifecycleHooks"]
    hooks.remove(_hook(example, "production-shift"))


def _different_hook_details(example, template):
    _hook(example, "post-shift")["HookDetails"] = {"skewWindow": "2h"}


def _hook_with_another_role(example, template):
    _hook(example, "post-test-traffic")["RoleArn"] = {"Fn::GetAtt": ["EcsLoadBalancerRole", "Arn"]}


def _no_test_rule_gap(example, template):
    example["Resources"]["ProductionRule"]["Properties"]["Priority"] = 11


def _production_rule_to_green(example, template):
    tgs = example["Resources"]["ProductionRule"]["Properties"]["Actions"][0]["ForwardConfig"]["TargetGroups"]
    tgs[0]["Weight"], tgs[1]["Weight"] = 0, 100


def _fixed_response_default(example, template):
    example["Resources"]["Listener"]["Properties"]["DefaultActions"] = [
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}
    ]


def _action_star(example, template):
    _statements(template, "LedgerWritePolicy").append({"Effect": "Allow", "Action": "*", "Resource": {"Fn::GetAtt": ["LedgerTable", "Arn"]}})


def _service_wildcard(example, template):
    _statements(template, "LedgerWritePolicy")[0]["Action"] = "dynamodb:*"


def _write_on_star(example, template):
    for st in _statements(template, "PinRulesPolicy"):
        if st["Action"] == "elasticloadbalancing:DeleteRule":
            st["Resource"] = "*"


def _extra_write_action(example, template):
    _statements(template, "LedgerWritePolicy")[0]["Action"].append("dynamodb:BatchWriteItem")


def _ledger_on_every_table(example, template):
    _statements(template, "LedgerWritePolicy")[0]["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*"}


def _create_rule_on_every_listener(example, template):
    for st in _statements(template, "PinRulesPolicy"):
        if st["Action"] == "elasticloadbalancing:CreateRule":
            st["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:elasticloadbalancing:${AWS::Region}:${AWS::AccountId}:listener/app/*"}


def _add_tags_anytime(example, template):
    for st in _statements(template, "PinRulesPolicy"):
        if st["Action"] == "elasticloadbalancing:AddTags":
            del st["Condition"]


def _retention_statement(template, action):
    return next(st for st in _statements(template, "RetentionStartPolicy") if st["Action"] == action)


def _create_service_untagged(example, template):
    del _retention_statement(template, "ecs:CreateService")["Condition"]


def _create_service_of_any_name(example, template):
    _retention_statement(template, "ecs:CreateService")["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:service/${ClusterName}/*"}


def _tag_services_anytime(example, template):
    del _retention_statement(template, "ecs:TagResource")["Condition"]["StringEquals"]["ecs:CreateAction"]


def _create_any_target_group(example, template):
    _retention_statement(template, "elasticloadbalancing:CreateTargetGroup")["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:elasticloadbalancing:${AWS::Region}:${AWS::AccountId}:targetgroup/*"}


def _tag_target_groups_anytime(example, template):
    del _retention_statement(template, "elasticloadbalancing:AddTags")["Condition"]["StringEquals"]["elasticloadbalancing:CreateAction"]


def _post_shift_without_teardown(example, template):
    arns = template["Resources"]["PostShiftRole"]["Properties"]["ManagedPolicyArns"]
    arns.remove({"Ref": "RetentionTeardownPolicy"})


def _post_shift_role_reads_deployments(example, template):
    role = template["Resources"]["PostShiftRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    role.append({"Effect": "Allow", "Action": "ecs:DescribeServiceDeployments", "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:service-deployment/*"}})


def _shared_role(example, template):
    template["Resources"]["PostShiftFunction"]["Properties"]["Role"] = {"Fn::GetAtt": ["ProductionShiftRole", "Arn"]}


def _invoke_role_on_star(example, template):
    _invoke_statement(template)["Resource"] = "*"


def _invoke_role_every_function(example, template):
    _invoke_statement(template)["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:*"}


def _invoke_role_reconciler(example, template):
    _invoke_statement(template)["Resource"].append({"Fn::GetAtt": ["ReconcilerFunction", "Arn"]})


def _invoke_role_more_actions(example, template):
    _invoke_statement(template)["Action"] = ["lambda:InvokeFunction", "lambda:UpdateFunctionCode"]


def _invoke_role_trusts_lambda(example, template):
    trust = template["Resources"]["HookInvokeRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    trust["Principal"]["Service"] = ["ecs.amazonaws.com", "lambda.amazonaws.com"]


def _invoke_role_managed_policy(example, template):
    template["Resources"]["HookInvokeRole"]["Properties"]["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/AWSLambda_FullAccess"]


def _no_pitr(example, template):
    del template["Resources"]["LedgerTable"]["Properties"]["PointInTimeRecoverySpecification"]


def _ttl_on_wrong_attribute(example, template):
    template["Resources"]["LedgerTable"]["Properties"]["TimeToLiveSpecification"]["AttributeName"] = "ttl"


def _no_deletion_protection(example, template):
    template["Resources"]["LedgerTable"]["Properties"]["DeletionProtectionEnabled"] = False


def _wrong_crate(example, template):
    template["Resources"]["PostShiftFunction"]["Properties"]["CodeUri"] = "../functions/post-shif"


def _wrong_runtime(example, template):
    template["Resources"]["PostShiftFunction"]["Properties"]["Runtime"] = "provided.al2"


def _x86_by_default(example, template):
    template["Parameters"]["Architecture"]["Default"] = "x86_64"


def _no_table_env(example, template):
    del template["Globals"]["Function"]["Environment"]["Variables"]["SKEWGUARD_TABLE"]


def _output_hook_at_wrong_stage(example, template):
    value = template["Outputs"]["LifecycleHooks"]["Value"]["Fn::Sub"]
    value[0] = value[0].replace('["POST_PRODUCTION_TRAFFIC_SHIFT"]', '["POST_TEST_TRAFFIC_SHIFT"]')


def _output_timeout_too_short(example, template):
    template["Mappings"]["SkewWindows"]["1h"]["HookTimeoutMinutes"] = 60


def _reconciler_misses_failures(example, template):
    events = template["Resources"]["ReconcilerFunction"]["Properties"]["Events"]
    events["DeploymentFinished"]["Properties"]["Pattern"]["detail"]["eventName"] = ["SERVICE_DEPLOYMENT_COMPLETED"]


def _rule_pattern_without_wildcard(example, template):
    for st in _statements(template, "PinRulesPolicy"):
        if st["Action"] == "elasticloadbalancing:DeleteRule":
            st["Resource"]["Fn::Split"][1]["Fn::Join"][1][1] = ""


def _describe_revisions_on_revisions_only(example, template):
    for st in _statements(template, "DescribeRevisionsPolicy"):
        if st["Action"] == "ecs:DescribeServiceRevisions":
            st["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:service-revision/${ClusterName}/*"}


def _describe_deployments_on_deployments_only(example, template):
    role = template["Resources"]["PostTestTrafficRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    for st in role:
        if st["Action"] == "ecs:DescribeServiceDeployments":
            st["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:service-deployment/${ClusterName}/*"}


def _reconciler_rule_for_every_cluster(example, template):
    events = template["Resources"]["ReconcilerFunction"]["Properties"]["Events"]
    del events["DeploymentFinished"]["Properties"]["Pattern"]["resources"]


def _reconciler_rule_for_a_prefix_of_the_cluster(example, template):
    pattern = template["Resources"]["ReconcilerFunction"]["Properties"]["Events"]["DeploymentFinished"]["Properties"]["Pattern"]
    pattern["resources"] = [{"prefix": {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:service/${ClusterName}"}}]


def _post_shift_timeout_continues(example, template):
    _hook(example, "post-shift")["TimeoutConfiguration"]["Action"] = "CONTINUE"


def _output_post_shift_timeout_continues(example, template):
    value = template["Outputs"]["LifecycleHooks"]["Value"]["Fn::Sub"]
    head, post_shift = value[0].rsplit('{"hookTargetArn":"${PostShift}"', 1)
    value[0] = head + '{"hookTargetArn":"${PostShift}"' + post_shift.replace('"action":"ROLLBACK"', '"action":"CONTINUE"')


BROKEN: dict[str, tuple[Callable, str]] = {
    "strategy ROLLING": (_set_strategy_rolling, "BLUE_GREEN"),
    "post-shift timeout below the skew window": (_post_shift_timeout_below_window, "comfortably longer"),
    "post-shift without a timeout": (_post_shift_timeout_missing, "no timeoutConfiguration"),
    "a skew window row with a short timeout": (_mapping_timeout_too_short, "comfortably longer"),
    "post-shift at the production shift": (_post_shift_at_the_production_shift, "post-shift handles"),
    "production-shift misses rollbacks before the shift": (_production_shift_without_test_traffic_stage, "production-shift handles"),
    "two hooks swapped": (_hooks_swapped, "handles"),
    "a hook missing": (_hook_missing, "not registered"),
    "different hookDetails": (_different_hook_details, "same hookDetails"),
    "a hook with another role": (_hook_with_another_role, "roleArn"),
    "no room for pins": (_no_test_rule_gap, "leave a gap"),
    "production rule not on blue": (_production_rule_to_green, "blue (100)"),
    "a fixed-response default action": (_fixed_response_default, "mixes forward"),
    "Action *": (_action_star, "wildcard action '*'"),
    "dynamodb:*": (_service_wildcard, "wildcard action 'dynamodb:*'"),
    "DeleteRule on *": (_write_on_star, "on Resource '*'"),
    "an extra write action": (_extra_write_action, "does not use"),
    "every table": (_ledger_on_every_table, "ledger table only"),
    "CreateRule on every listener": (_create_rule_on_every_listener, "ListenerArns only"),
    "AddTags without CreateAction": (_add_tags_anytime, "tagging on CreateRule"),
    "post-shift may read deployments": (_post_shift_role_reads_deployments, "does not use"),
    "CreateService without skewguard:managed": (_create_service_untagged, "ecs:CreateService must require the request tag skewguard:managed=true"),
    "CreateService of any name": (_create_service_of_any_name, "ecs:CreateService must be on the cluster's *-sg-* services only"),
    "TagResource without CreateAction": (_tag_services_anytime, "TagResource must be limited to tagging on CreateService"),
    "CreateTargetGroup of any name": (_create_any_target_group, "CreateTargetGroup must be on sg-* target groups only"),
    "AddTags on target groups without CreateAction": (_tag_target_groups_anytime, "AddTags must be limited to tagging on CreateRule (pins) or CreateTargetGroup"),
    "post-shift cannot tear down a copy": (_post_shift_without_teardown, "missing actions it needs: ['ecs:DeleteService', 'ecs:DescribeServices', 'ecs:UpdateService', 'elasticloadbalancing:DeleteTargetGroup', 'elasticloadbalancing:DescribeTargetGroups']"),
    "two functions share a role": (_shared_role, "one role per function"),
    "invoke role on *": (_invoke_role_on_star, "only the three hooks"),
    "invoke role on every function": (_invoke_role_every_function, "only the three hooks"),
    "invoke role may invoke the reconciler": (_invoke_role_reconciler, "only the three hooks"),
    "invoke role may update code": (_invoke_role_more_actions, "only lambda:InvokeFunction"),
    "invoke role trusted by Lambda": (_invoke_role_trusts_lambda, "ecs.amazonaws.com only"),
    "invoke role with a managed policy": (_invoke_role_managed_policy, "no managed policies"),
    "ledger without PITR": (_no_pitr, "point-in-time"),
    "TTL on the wrong attribute": (_ttl_on_wrong_attribute, "expiresAt"),
    "ledger deletable": (_no_deletion_protection, "deletion protection"),
    "CodeUri of a missing crate": (_wrong_crate, "no AWS::Serverless::Function builds functions/post-shift"),
    "wrong runtime": (_wrong_runtime, "provided.al2023"),
    "x86_64 by default": (_x86_by_default, "default to arm64"),
    "no table name": (_no_table_env, "SKEWGUARD_TABLE"),
    "output hook at the wrong stage": (_output_hook_at_wrong_stage, "post-shift handles"),
    "output timeout too short": (_output_timeout_too_short, "comfortably longer"),
    "reconciler ignores failed deployments": (_reconciler_misses_failures, "COMPLETED and FAILED"),
    "rule ARN pattern without /*": (_rule_pattern_without_wildcard, "gave"),
    "DescribeServiceRevisions on revisions only": (_describe_revisions_on_revisions_only, "does not allow ecs:DescribeServiceRevisions on resource type service "),
    "DescribeServiceDeployments on deployments only": (_describe_deployments_on_deployments_only, "does not allow ecs:DescribeServiceDeployments on resource type service "),
    "reconciler rule for every cluster": (_reconciler_rule_for_every_cluster, "which its role may not read"),
    "reconciler rule for a name prefix of the cluster": (_reconciler_rule_for_a_prefix_of_the_cluster, "shopping/web, which its role may not read"),
    "post-shift timeout action CONTINUE": (_post_shift_timeout_continues, "must be ROLLBACK, not CONTINUE"),
    "output: post-shift timeout action CONTINUE": (_output_post_shift_timeout_continues, "must be ROLLBACK, not CONTINUE"),
}


def test_event_pattern_matching():
    event = sg.deployment_event("arn:aws:ecs:eu-west-1:1:service/shop/web")
    assert sg.eventbridge_matches({"source": ["aws.ecs"], "resources": [{"wildcard": "arn:aws:ecs:eu-west-1:1:service/shop/*"}]}, event)
    assert sg.eventbridge_matches({"resources": [{"wildcard": "arn:aws:ecs:*:*:service/*/*"}]}, event)
    assert not sg.eventbridge_matches({"resources": [{"wildcard": "arn:aws:ecs:eu-west-1:1:service/sho/*"}]}, event)
    assert sg.eventbridge_matches({"resources": [{"prefix": "arn:aws:ecs:eu-west-1:1:service/sho"}]}, event)
    assert not sg.eventbridge_matches({"detail": {"eventName": ["SERVICE_DEPLOYMENT_FAILED"]}}, event)
    assert not sg.eventbridge_matches({"detail": {"clusterArn": ["x"]}}, event)
    with pytest.raises(ValueError):
        sg.eventbridge_matches({"resources": [{"suffix": "/web"}]}, event)


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_copy_is_reported(name, template, example):
    breaks, expected = BROKEN[name]
    broken_template, broken_example = copy.deepcopy(template), copy.deepcopy(example)
    breaks(broken_example, broken_template)
    problems = sg.all_problems(broken_template, broken_example)
    assert problems, f"{name}: the checks found nothing wrong"
    assert any(expected in p for p in problems), f"{name}: no problem mentions {expected!r}: {problems}"
