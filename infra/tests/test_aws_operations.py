"""infra/aws-operations.yaml against the code and against the Service Authorization Reference.

The list of AWS operations each function makes is what its IAM role is checked against
(``check_role_grants``, ``check_function_roles``); these tests keep the list honest: every AWS SDK
call in a function's sources must be on it.
"""

from __future__ import annotations

import copy

import pytest

import skewguard_infra as sg


@pytest.fixture(scope="module")
def calls_by_function() -> dict[str, dict[str, list[str]]]:
    metadata = sg.cargo_metadata()
    found = {}
    for crate in sg.FUNCTIONS:
        sources, operations = sg.function_sources(metadata, crate)
        found[crate] = sg.sdk_calls(sources, operations)
    return found


@pytest.fixture(scope="module")
def template() -> dict:
    return sg.load(sg.TEMPLATE)


def test_the_scan_finds_the_calls_of_every_aws_client(calls_by_function):
    # The scan itself works: the ECS, ELBv2 and DynamoDB calls each function is built with.
    for crate, calls in calls_by_function.items():
        assert {"describe_service_revisions", "create_rule", "delete_rule", "transact_write_items", "query"} <= set(calls), crate
        assert all(":" in where for sites in calls.values() for where in sites)


def test_every_sdk_call_of_the_functions_is_listed(calls_by_function):
    assert sg.check_operations_cover_the_code(calls_by_function) == []


def test_an_sdk_call_missing_from_the_list_is_reported(calls_by_function):
    added = copy.deepcopy(calls_by_function)
    added["post-shift"]["modify_rule"] = ["shared/src/aws/elb.rs:1"]
    problems = sg.check_operations_cover_the_code(added)
    assert any("modify_rule() (shared/src/aws/elb.rs:1) is not in aws-operations.yaml" in p for p in problems), problems


def test_a_listed_call_gone_from_the_code_is_reported(calls_by_function):
    removed = copy.deepcopy(calls_by_function)
    for calls in removed.values():
        calls.pop("scan", None)
    problems = sg.check_operations_cover_the_code(removed)
    assert any("scan() is no longer called" in p for p in problems), problems


def test_a_call_no_function_lists_is_reported(calls_by_function):
    operations = copy.deepcopy(sg.OPERATIONS)
    operations["functions"]["reconciler"].remove("dynamodb:Scan")
    problems = sg.check_operations_cover_the_code(calls_by_function, operations)
    assert any("scan() is called, but no function lists" in p for p in problems), problems


def test_the_roles_grant_every_required_resource_type(template):
    assert sg.check_role_grants(template) == []


def test_a_resource_type_missing_from_the_list_is_reported(template):
    operations = copy.deepcopy(sg.OPERATIONS)
    del operations["actions"]["ecs:DescribeServiceDeployments"]["resources"]["service"]
    problems = sg.check_role_grants(template, operations)
    assert any("requires resource type 'service'" in p for p in problems), problems


def test_a_resource_of_the_wrong_type_is_reported(template):
    operations = copy.deepcopy(sg.OPERATIONS)
    resources = operations["actions"]["ecs:ListServiceDeployments"]["resources"]
    resources["service"] = resources["service"].replace(":service/", ":service-deployment/")
    problems = sg.check_role_grants(template, operations)
    assert any("is not a service ARN" in p for p in problems), problems


def test_a_call_without_its_tags_is_not_allowed(template):
    operations = copy.deepcopy(sg.OPERATIONS)
    del operations["actions"]["elasticloadbalancing:CreateRule"]["context"]["aws:RequestTag/skewguard:service"]
    problems = sg.check_role_grants(template, operations)
    assert any("does not allow elasticloadbalancing:CreateRule" in p for p in problems), problems


def test_a_retention_copy_without_the_managed_tag_is_not_allowed(template):
    operations = copy.deepcopy(sg.OPERATIONS)
    for key in ("ecs:CreateService", "ecs:TagResource", "elasticloadbalancing:CreateTargetGroup", "elasticloadbalancing:AddTags (CreateTargetGroup)"):
        del operations["actions"][key]["context"]["aws:RequestTag/skewguard:managed"]
    problems = sg.check_role_grants(template, operations)
    for action in ("ecs:CreateService", "ecs:TagResource", "elasticloadbalancing:CreateTargetGroup", "elasticloadbalancing:AddTags"):
        assert any(f"(post-shift): does not allow {action} on resource type" in p for p in problems), (action, problems)


def test_a_target_group_of_another_name_is_not_allowed(template):
    operations = copy.deepcopy(sg.OPERATIONS)
    spec = operations["actions"]["elasticloadbalancing:CreateTargetGroup"]["resources"]
    spec["targetgroup"] = spec["targetgroup"].replace("/sg-0123456789abcdef/", "/web-green/")
    problems = sg.check_role_grants(template, operations)
    assert any("does not allow elasticloadbalancing:CreateTargetGroup" in p for p in problems), problems


def test_tags_on_a_pin_are_not_tags_on_a_target_group(template):
    # The second AddTags entry is checked with its own context: CreateRule's tags do not stand in.
    operations = copy.deepcopy(sg.OPERATIONS)
    operations["actions"]["elasticloadbalancing:AddTags (CreateTargetGroup)"]["context"]["elasticloadbalancing:CreateAction"] = "CreateRule"
    problems = sg.check_role_grants(template, operations)
    assert any("(post-shift): does not allow elasticloadbalancing:AddTags on resource type targetgroup" in p for p in problems), problems


@pytest.mark.parametrize(
    "statement, action, resource, context, allowed",
    [
        ({"Effect": "Allow", "Action": "ecs:Describe*", "Resource": "arn:aws:ecs:*:1:service/shop/*"}, "ecs:DescribeServiceRevisions", "arn:aws:ecs:eu-west-1:1:service/shop/web", {}, True),
        ({"Effect": "Allow", "Action": "ecs:Describe*", "Resource": "arn:aws:ecs:*:1:service/shop/*"}, "ecs:DescribeServiceRevisions", "arn:aws:ecs:eu-west-1:1:service/shopping/web", {}, False),
        ({"Effect": "Allow", "Action": "ecs:DescribeServices", "Resource": "*"}, "ecs:DescribeServiceRevisions", "*", {}, False),
        ({"Effect": "Allow", "Action": "a:B", "Resource": "r?", "Condition": {"Null": {"k": "false"}}}, "a:B", "r1", {"k": "v"}, True),
        ({"Effect": "Allow", "Action": "a:B", "Resource": "r?", "Condition": {"Null": {"k": "false"}}}, "a:B", "r1", {}, False),
        ({"Effect": "Allow", "Action": "a:B", "Resource": "r", "Condition": {"StringEquals": {"k": "CreateRule"}}}, "a:B", "r", {"k": "ModifyRule"}, False),
        ({"Effect": "Deny", "Action": "a:*", "Resource": "*"}, "a:B", "r", {}, False),
    ],
)
def test_the_policy_evaluation(statement, action, resource, context, allowed):
    statements = [statement] if statement["Effect"] == "Allow" else [{"Effect": "Allow", "Action": "*", "Resource": "*"}, statement]
    assert sg.role_allows(statements, action, resource, context) is allowed


def test_an_unknown_condition_operator_is_an_error():
    with pytest.raises(ValueError):
        sg.role_allows([{"Effect": "Allow", "Action": "a:B", "Resource": "*", "Condition": {"ArnLike": {"k": "v"}}}], "a:B", "r", {"k": "v"})
