//! IAM in the local world: each function process may do only what its role in
//! `infra/template.yaml` allows.
//!
//! [`Roles`] reads the identity-policy statements of each function's role from the template
//! (inline policies, and managed policies of the template attached to it) and resolves the
//! CloudFormation intrinsics in them (`Ref`, `Fn::Sub`, `Fn::GetAtt`, `Fn::Join`, `Fn::Split`,
//! `Fn::If` with `Fn::Equals` conditions) with the world's values ([`WorldValues`]). Anything it
//! cannot resolve or evaluate — another intrinsic, a `Ref` or `GetAtt` it has no value for, a
//! managed policy from outside the template, `NotAction`/`NotResource`, a condition operator
//! other than `StringEquals`, `StringLike` (each also with `ForAllValues:` or `ForAnyValue:`)
//! and `Null` — is an error when the roles are loaded, never a guess.
//!
//! [`AuthorisingProxy`] stands between one function process and the stand-ins. It derives from
//! each call the IAM requests AWS would authorise (action, resource ARN, condition keys) and
//! answers `AccessDenied` in the protocol's own shape (ELBv2 query XML `AccessDenied`, JSON
//! `AccessDeniedException` for DynamoDB and ECS) unless an Allow statement matches and no Deny
//! does; otherwise it forwards the call unchanged.
//!
//! What it models:
//! - actions and resource ARNs with `*` and `?` wildcards (actions case-insensitively);
//! - the calls the functions make, authorised as AWS documents them: ECS `DescribeServiceRevisions`
//!   and `DescribeServiceDeployments` on the service *and* each revision/deployment,
//!   `ListServiceDeployments` on the service, `DescribeTaskDefinition` and ELBv2 `Describe*` on
//!   `*`; DynamoDB item calls on the table, `TransactWriteItems` as one `UpdateItem`/`PutItem`/
//!   `DeleteItem`/`ConditionCheckItem` per item; ELBv2 `CreateRule` on the listener, and, when it
//!   carries tags, `AddTags` on the new rule (an ARN under the listener) with
//!   `elasticloadbalancing:CreateAction = CreateRule`; `DeleteRule` and `AddTags` on the rule;
//! - for retention: ECS `CreateService` on the new service's ARN (with its tags, and
//!   `ecs:TagResource` with `ecs:CreateAction = CreateService` when it carries tags),
//!   `UpdateService`/`DeleteService`/`DescribeServices`/`TagResource`/`UntagResource`/
//!   `ListTagsForResource` on the service; ELBv2 `CreateTargetGroup` on a target-group ARN of
//!   that name (and `AddTags` with `elasticloadbalancing:CreateAction = CreateTargetGroup` when
//!   tagged), `DeleteTargetGroup`/`ModifyTargetGroup(Attributes)`/`(De)RegisterTargets` on the
//!   group, `ModifyRule` on the rule; CloudWatch `GetMetricData`/`GetMetricStatistics`/
//!   `ListMetrics` on `*`, `PutMetricData` on `*` with `cloudwatch:namespace`;
//! - the condition keys the template uses: `aws:RequestTag/KEY` and `aws:TagKeys` (the tags in
//!   a create or tagging request), `aws:ResourceTag/KEY` (the resource's tags just before the
//!   call: rules and target groups from moto, services from the ECS emulator; a resource that is
//!   gone has none), `elasticloadbalancing:CreateAction` and `ecs:CreateAction`; with
//!   `ForAllValues:` (true when the key is absent, as IAM documents) and `ForAnyValue:`.
//!
//! What it does not model: resource-based policies, permission boundaries, SCPs and session
//! policies; condition keys other than those (an unknown key is simply absent, so a condition
//! on it fails closed); `…IfExists` and the other operators; the
//! difference between "not found" and "denied" for resources that do not exist (beyond what the
//! tag lookup gives); the calls the functions do not make (any other operation is denied with
//! a message saying it is not modelled). Calls the test process itself makes do not go through
//! it: only function processes are confined.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::aws::{ACCOUNT_ID, Endpoints, REGION};
use crate::faults::{Service, error_response_with, identify_request};

/// A template the evaluator cannot read faithfully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IAM evaluator: {0}")]
pub struct IamError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, IamError> {
    Err(IamError(message.into()))
}

/// The values the template is resolved with.
#[derive(Debug, Clone)]
pub struct WorldValues {
    pub region: String,
    pub account: String,
    pub stack_name: String,
    /// Template parameters (a `CommaDelimitedList` is split); the rest take their defaults.
    pub parameters: BTreeMap<String, String>,
    /// `Fn::GetAtt` values, as `"Logical.Attribute"`; the ARN of every `AWS::Logs::LogGroup` and
    /// `AWS::SQS::Queue` is derived from its name (given, or the one CloudFormation makes up).
    pub attributes: BTreeMap<String, String>,
}

impl WorldValues {
    /// The local world: its Region and account, the ledger table [`crate::world::TABLE`], the
    /// cluster [`crate::world::CLUSTER`], and every Application Load Balancer listener of the
    /// account as `ListenerArns` (the world's load balancers are created by the tests).
    pub fn world() -> WorldValues {
        WorldValues {
            region: REGION.to_owned(),
            account: ACCOUNT_ID.to_owned(),
            stack_name: "skewguard".to_owned(),
            parameters: BTreeMap::from([
                (
                    "ListenerArns".to_owned(),
                    format!(
                        "arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT_ID}:listener/app/*/*/*"
                    ),
                ),
                ("ClusterName".to_owned(), crate::world::CLUSTER.to_owned()),
            ]),
            attributes: BTreeMap::from([(
                "LedgerTable.Arn".to_owned(),
                format!(
                    "arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{}",
                    crate::world::TABLE
                ),
            )]),
        }
    }
}

/// A resolved value of the template.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Str(String),
    Bool(bool),
    List(Vec<V>),
    Map(BTreeMap<String, V>),
    /// `AWS::NoValue`: dropped from the list or map that holds it.
    NoValue,
}

impl V {
    fn str(&self, what: &str) -> Result<&str, IamError> {
        match self {
            V::Str(s) => Ok(s),
            other => err(format!("{what}: expected a string, got {other:?}")),
        }
    }

    fn strings(&self, what: &str) -> Result<Vec<String>, IamError> {
        match self {
            V::Str(s) => Ok(vec![s.clone()]),
            V::List(items) => items
                .iter()
                .map(|i| i.str(what).map(str::to_owned))
                .collect(),
            other => err(format!("{what}: expected strings, got {other:?}")),
        }
    }
}

struct Resolver<'a> {
    template: &'a Yaml,
    values: &'a WorldValues,
    attributes: BTreeMap<String, String>,
}

fn get<'a>(node: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    node.as_mapping().and_then(|m| m.get(key))
}

impl Resolver<'_> {
    fn resolve(&self, node: &Yaml) -> Result<V, IamError> {
        match node {
            Yaml::Null => err("a null value"),
            Yaml::Bool(b) => Ok(V::Bool(*b)),
            Yaml::Number(n) => Ok(V::Str(n.to_string())),
            Yaml::String(s) => Ok(V::Str(s.clone())),
            Yaml::Sequence(items) => Ok(V::List(
                items
                    .iter()
                    .map(|i| self.resolve(i))
                    .filter(|r| r != &Ok(V::NoValue))
                    .collect::<Result<_, _>>()?,
            )),
            Yaml::Mapping(map) => {
                if map.len() == 1 {
                    let (key, arg) = map.iter().next().expect("one entry");
                    if let Some(key) = key.as_str()
                        && (key == "Ref" || key.starts_with("Fn::") || key == "Condition")
                    {
                        return self.intrinsic(key, arg);
                    }
                }
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    let Some(k) = k.as_str() else {
                        return err(format!("a non-string key {k:?}"));
                    };
                    match self.resolve(v)? {
                        V::NoValue => {}
                        v => {
                            out.insert(k.to_owned(), v);
                        }
                    }
                }
                Ok(V::Map(out))
            }
            Yaml::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let name = tag.trim_start_matches('!');
                let key = if name == "Ref" || name == "Condition" {
                    name.to_owned()
                } else {
                    format!("Fn::{name}")
                };
                self.intrinsic(&key, &tagged.value)
            }
        }
    }

    fn pseudo(&self, name: &str) -> Option<String> {
        Some(match name {
            "AWS::Region" => self.values.region.clone(),
            "AWS::AccountId" => self.values.account.clone(),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::StackName" => self.values.stack_name.clone(),
            "AWS::URLSuffix" => "amazonaws.com".to_owned(),
            _ => return None,
        })
    }

    fn reference(&self, name: &str) -> Result<V, IamError> {
        if name == "AWS::NoValue" {
            return Ok(V::NoValue);
        }
        if let Some(value) = self.pseudo(name) {
            return Ok(V::Str(value));
        }
        let Some(spec) = get(self.template, "Parameters").and_then(|p| get(p, name)) else {
            return err(format!(
                "Ref {name}: not a parameter or pseudo parameter (the evaluator resolves no \
                 resource Ref)"
            ));
        };
        let value = match self.values.parameters.get(name) {
            Some(v) => v.clone(),
            None => match get(spec, "Default") {
                Some(Yaml::String(s)) => s.clone(),
                Some(Yaml::Number(n)) => n.to_string(),
                _ => {
                    return err(format!(
                        "parameter {name} has no default and no world value"
                    ));
                }
            },
        };
        let kind = get(spec, "Type").and_then(Yaml::as_str).unwrap_or("String");
        if kind == "CommaDelimitedList" || kind.starts_with("List<") {
            Ok(V::List(
                value
                    .split(',')
                    .map(|s| V::Str(s.trim().to_owned()))
                    .collect(),
            ))
        } else {
            Ok(V::Str(value))
        }
    }

    fn attribute(&self, name: &str) -> Result<V, IamError> {
        match self.attributes.get(name) {
            Some(v) => Ok(V::Str(v.clone())),
            None => err(format!("Fn::GetAtt {name}: no world value for it")),
        }
    }

    fn condition(&self, name: &str) -> Result<bool, IamError> {
        let Some(node) = get(self.template, "Conditions").and_then(|c| get(c, name)) else {
            return err(format!("unknown condition {name}"));
        };
        match self.resolve(node)? {
            V::Bool(b) => Ok(b),
            other => err(format!("condition {name} is not a boolean: {other:?}")),
        }
    }

    fn args<'n>(&self, key: &str, arg: &'n Yaml, n: usize) -> Result<&'n [Yaml], IamError> {
        match arg.as_sequence() {
            Some(items) if items.len() == n => Ok(items),
            _ => err(format!("{key} takes a list of {n}, not {arg:?}")),
        }
    }

    fn intrinsic(&self, key: &str, arg: &Yaml) -> Result<V, IamError> {
        match key {
            "Ref" => self.reference(arg.as_str().unwrap_or_default()),
            "Condition" => Ok(V::Bool(self.condition(arg.as_str().unwrap_or_default())?)),
            "Fn::GetAtt" => {
                let name = match arg {
                    Yaml::String(s) => s.clone(),
                    Yaml::Sequence(parts) => parts
                        .iter()
                        .map(|p| self.resolve(p).and_then(|v| Ok(v.str(key)?.to_owned())))
                        .collect::<Result<Vec<_>, _>>()?
                        .join("."),
                    other => return err(format!("Fn::GetAtt of {other:?}")),
                };
                self.attribute(&name)
            }
            "Fn::Sub" => {
                let (text, variables) = match arg {
                    Yaml::String(s) => (s.clone(), BTreeMap::new()),
                    Yaml::Sequence(items) if items.len() == 2 => {
                        let text = items[0].as_str().unwrap_or_default().to_owned();
                        let V::Map(vars) = self.resolve(&items[1])? else {
                            return err("Fn::Sub variables must be a map");
                        };
                        (text, vars)
                    }
                    other => return err(format!("Fn::Sub of {other:?}")),
                };
                self.substitute(&text, &variables).map(V::Str)
            }
            "Fn::Join" => {
                let items = self.args(key, arg, 2)?;
                let delimiter = self.resolve(&items[0])?;
                let parts = self.resolve(&items[1])?.strings(key)?;
                Ok(V::Str(parts.join(delimiter.str(key)?)))
            }
            "Fn::Split" => {
                let items = self.args(key, arg, 2)?;
                let delimiter = self.resolve(&items[0])?;
                let source = self.resolve(&items[1])?;
                Ok(V::List(
                    source
                        .str(key)?
                        .split(delimiter.str(key)?)
                        .map(|s| V::Str(s.to_owned()))
                        .collect(),
                ))
            }
            "Fn::If" => {
                let items = self.args(key, arg, 3)?;
                let name = items[0].as_str().unwrap_or_default();
                self.resolve(if self.condition(name)? {
                    &items[1]
                } else {
                    &items[2]
                })
            }
            "Fn::Equals" => {
                let items = self.args(key, arg, 2)?;
                Ok(V::Bool(
                    self.resolve(&items[0])? == self.resolve(&items[1])?,
                ))
            }
            other => err(format!("cannot resolve {other}")),
        }
    }

    fn substitute(&self, text: &str, variables: &BTreeMap<String, V>) -> Result<String, IamError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                return err(format!("Fn::Sub: unclosed ${{ in {text}"));
            };
            let name = &rest[start + 2..start + end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(value) = variables.get(name) {
                out.push_str(value.str(name)?);
            } else if name.contains('.') {
                out.push_str(self.attribute(name)?.str(name)?);
            } else {
                out.push_str(self.reference(name)?.str(name)?);
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A condition operator the evaluator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringLike,
    Null,
}

/// How a condition treats a key with several values (`aws:TagKeys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetQualifier {
    /// No qualifier: the key must be present and every value it has must match.
    Single,
    /// `ForAllValues:`: every value the key has matches; true when the key is absent or empty
    /// (as IAM documents, which makes it permissive on its own).
    ForAll,
    /// `ForAnyValue:`: at least one value matches; false when the key is absent.
    ForAny,
}

#[derive(Debug, Clone)]
struct Statement {
    allow: bool,
    actions: Vec<String>,
    resources: Vec<String>,
    /// (set qualifier, operator, lower-cased key, values)
    conditions: Vec<(SetQualifier, Operator, String, Vec<String>)>,
}

impl Statement {
    fn parse(value: &V) -> Result<Statement, IamError> {
        let V::Map(fields) = value else {
            return err(format!("a statement that is not a map: {value:?}"));
        };
        for key in fields.keys() {
            if !matches!(
                key.as_str(),
                "Sid" | "Effect" | "Action" | "Resource" | "Condition"
            ) {
                return err(format!("statement key {key} is not evaluated"));
            }
        }
        let allow = match fields.get("Effect") {
            Some(V::Str(e)) if e == "Allow" => true,
            Some(V::Str(e)) if e == "Deny" => false,
            other => return err(format!("statement Effect {other:?}")),
        };
        let strings = |key: &str| -> Result<Vec<String>, IamError> {
            fields
                .get(key)
                .ok_or_else(|| IamError(format!("statement without {key}")))?
                .strings(key)
        };
        let mut conditions = Vec::new();
        match fields.get("Condition") {
            None => {}
            Some(V::Map(operators)) => {
                for (operator, tests) in operators {
                    let (qualifier, bare) = match operator.split_once(':') {
                        Some(("ForAllValues", bare)) => (SetQualifier::ForAll, bare),
                        Some(("ForAnyValue", bare)) => (SetQualifier::ForAny, bare),
                        Some(_) => {
                            return err(format!("condition operator {operator} is not modelled"));
                        }
                        None => (SetQualifier::Single, operator.as_str()),
                    };
                    let operator = match bare {
                        "StringEquals" => Operator::StringEquals,
                        "StringLike" => Operator::StringLike,
                        "Null" if qualifier == SetQualifier::Single => Operator::Null,
                        _ => return err(format!("condition operator {operator} is not modelled")),
                    };
                    let V::Map(tests) = tests else {
                        return err(format!("condition {operator:?} is not a map"));
                    };
                    for (key, values) in tests {
                        let values = match values {
                            V::Bool(b) => vec![b.to_string()],
                            v => v.strings(key)?,
                        };
                        conditions.push((qualifier, operator, key.to_lowercase(), values));
                    }
                }
            }
            Some(other) => return err(format!("statement Condition {other:?}")),
        }
        Ok(Statement {
            allow,
            actions: strings("Action")?,
            resources: strings("Resource")?,
            conditions,
        })
    }

    fn matches(&self, request: &AuthzRequest) -> bool {
        self.actions
            .iter()
            .any(|a| wildcard_match(&a.to_lowercase(), &request.action.to_lowercase()))
            && self
                .resources
                .iter()
                .any(|r| wildcard_match(r, &request.resource))
            && self
                .conditions
                .iter()
                .all(|(qualifier, operator, key, wanted)| {
                    condition_holds(*qualifier, *operator, request.context.get(key), wanted)
                })
    }
}

/// Whether one condition holds for the values a request has for its key (`None`: absent).
fn condition_holds(
    qualifier: SetQualifier,
    operator: Operator,
    present: Option<&Vec<String>>,
    wanted: &[String],
) -> bool {
    let one = |value: &String| match operator {
        Operator::StringEquals => wanted.contains(value),
        Operator::StringLike => wanted.iter().any(|w| wildcard_match(w, value)),
        Operator::Null => false,
    };
    match (operator, qualifier) {
        (Operator::Null, _) => {
            let must_be_absent = wanted.iter().any(|w| w == "true");
            present.is_none_or(Vec::is_empty) == must_be_absent
        }
        (_, SetQualifier::Single) => {
            present.is_some_and(|values| !values.is_empty() && values.iter().all(one))
        }
        (_, SetQualifier::ForAll) => present.is_none_or(|values| values.iter().all(one)),
        (_, SetQualifier::ForAny) => present.is_some_and(|values| values.iter().any(one)),
    }
}

/// IAM's wildcards: `*` any run of characters (none included), `?` any one character.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One request AWS authorises: an action on a resource, with the request's condition keys
/// (lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRequest {
    pub action: String,
    pub resource: String,
    pub context: BTreeMap<String, Vec<String>>,
}

impl AuthzRequest {
    pub fn new(action: &str, resource: &str) -> Self {
        Self {
            action: action.to_owned(),
            resource: resource.to_owned(),
            context: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, values: Vec<String>) -> Self {
        self.context.insert(key.to_lowercase(), values);
        self
    }
}

/// The identity-policy statements of one function's role.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    statements: Vec<Statement>,
}

impl Role {
    /// An explicit Deny wins; otherwise any matching Allow allows.
    pub fn allows(&self, request: &AuthzRequest) -> bool {
        let matching: Vec<&Statement> = self
            .statements
            .iter()
            .filter(|s| s.matches(request))
            .collect();
        !matching.is_empty() && matching.iter().all(|s| s.allow)
    }
}

/// The roles of the functions a template builds.
#[derive(Debug, Clone)]
pub struct Roles {
    by_function: BTreeMap<String, Role>,
}

impl Roles {
    /// `infra/template.yaml` of this checkout.
    pub fn template_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml")
    }

    /// The roles of `infra/template.yaml`, resolved with [`WorldValues::world`]; read once.
    pub fn world() -> Result<&'static Roles, IamError> {
        static ROLES: OnceLock<Result<Roles, IamError>> = OnceLock::new();
        ROLES
            .get_or_init(|| {
                let text = std::fs::read_to_string(Self::template_path())
                    .map_err(|e| IamError(format!("{}: {e}", Self::template_path().display())))?;
                Roles::from_yaml(&text, &WorldValues::world())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The roles of the functions (`AWS::Serverless::Function`, named by their `CodeUri`'s last
    /// component) of a template.
    pub fn from_yaml(text: &str, values: &WorldValues) -> Result<Roles, IamError> {
        let template: Yaml =
            serde_yaml_ng::from_str(text).map_err(|e| IamError(format!("template: {e}")))?;
        let mut resolver = Resolver {
            template: &template,
            values,
            attributes: values.attributes.clone(),
        };
        let Some(resources) = get(&template, "Resources").and_then(Yaml::as_mapping) else {
            return err("the template has no Resources");
        };
        let kind = |r: &Yaml| get(r, "Type").and_then(Yaml::as_str).map(str::to_owned);
        for (logical, resource) in resources {
            let logical_name = logical.as_str().unwrap_or_default();
            if kind(resource).as_deref() == Some("AWS::SQS::Queue") {
                let name = match get(resource, "Properties").and_then(|p| get(p, "QueueName")) {
                    Some(name) => resolver.resolve(name)?.str("QueueName")?.to_owned(),
                    None => format!("{}-{logical_name}", values.stack_name),
                };
                let arn = format!("arn:aws:sqs:{}:{}:{name}", values.region, values.account);
                resolver
                    .attributes
                    .insert(format!("{logical_name}.Arn"), arn);
            }
            if kind(resource).as_deref() == Some("AWS::Logs::LogGroup")
                && let Some(name) = get(resource, "Properties").and_then(|p| get(p, "LogGroupName"))
            {
                let name = resolver.resolve(name)?.str("LogGroupName")?.to_owned();
                let arn = format!(
                    "arn:aws:logs:{}:{}:log-group:{name}:*",
                    values.region, values.account
                );
                let logical = logical.as_str().unwrap_or_default();
                resolver.attributes.insert(format!("{logical}.Arn"), arn);
            }
        }
        let mut by_function = BTreeMap::new();
        for (logical, resource) in resources {
            if kind(resource).as_deref() != Some("AWS::Serverless::Function") {
                continue;
            }
            let logical = logical.as_str().unwrap_or_default();
            let props = get(resource, "Properties");
            let Some(code_uri) = props.and_then(|p| get(p, "CodeUri")).and_then(Yaml::as_str)
            else {
                return err(format!("{logical}: CodeUri is not a path"));
            };
            let function = code_uri.rsplit('/').next().unwrap_or(code_uri).to_owned();
            let role = role_of(logical, props.and_then(|p| get(p, "Role")))?;
            let mut documents: Vec<&Yaml> = Vec::new();
            let Some(role_resource) = resources.get(role.as_str()) else {
                return err(format!("{logical}: role {role} is not in the template"));
            };
            let role_props = get(role_resource, "Properties");
            for policy in role_props
                .and_then(|p| get(p, "Policies"))
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                documents.extend(get(policy, "PolicyDocument"));
            }
            for arn in role_props
                .and_then(|p| get(p, "ManagedPolicyArns"))
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                let target = reference_target(arn);
                let managed = target.and_then(|t| resources.get(t));
                match managed {
                    Some(m) if kind(m).as_deref() == Some("AWS::IAM::ManagedPolicy") => {
                        documents
                            .extend(get(m, "Properties").and_then(|p| get(p, "PolicyDocument")));
                    }
                    _ => {
                        return err(format!(
                            "{role}: managed policy {arn:?} is not a policy of the template"
                        ));
                    }
                }
            }
            for (_, other) in resources {
                if matches!(
                    kind(other).as_deref(),
                    Some("AWS::IAM::ManagedPolicy" | "AWS::IAM::Policy")
                ) && get(other, "Properties")
                    .and_then(|p| get(p, "Roles"))
                    .and_then(Yaml::as_sequence)
                    .is_some_and(|roles| roles.iter().any(|r| reference_target(r) == Some(&role)))
                {
                    documents
                        .extend(get(other, "Properties").and_then(|p| get(p, "PolicyDocument")));
                }
            }
            let mut statements = Vec::new();
            for document in documents {
                let Some(list) = get(document, "Statement") else {
                    return err(format!("{role}: a policy without Statement"));
                };
                match resolver.resolve(list)? {
                    V::List(items) => {
                        for item in &items {
                            statements.push(Statement::parse(item)?);
                        }
                    }
                    single => statements.push(Statement::parse(&single)?),
                }
            }
            by_function.insert(
                function,
                Role {
                    name: role,
                    statements,
                },
            );
        }
        Ok(Roles { by_function })
    }

    pub fn role(&self, function: &str) -> Result<&Role, IamError> {
        self.by_function
            .get(function)
            .ok_or_else(|| IamError(format!("the template builds no function {function}")))
    }
}

fn reference_target(node: &Yaml) -> Option<&str> {
    match node {
        Yaml::Tagged(t) if t.tag == "Ref" => t.value.as_str(),
        Yaml::Mapping(_) => get(node, "Ref").and_then(Yaml::as_str),
        _ => None,
    }
}

fn role_of(function: &str, node: Option<&Yaml>) -> Result<String, IamError> {
    let name = match node {
        Some(Yaml::Tagged(t)) if t.tag == "GetAtt" => match &t.value {
            Yaml::String(s) => s.clone(),
            Yaml::Sequence(p) => p
                .iter()
                .filter_map(Yaml::as_str)
                .collect::<Vec<_>>()
                .join("."),
            _ => String::new(),
        },
        Some(node @ Yaml::Mapping(_)) => match get(node, "Fn::GetAtt") {
            Some(Yaml::String(s)) => s.clone(),
            Some(Yaml::Sequence(p)) => p
                .iter()
                .filter_map(Yaml::as_str)
                .collect::<Vec<_>>()
                .join("."),
            _ => String::new(),
        },
        _ => String::new(),
    };
    match name.strip_suffix(".Arn") {
        Some(role) if !role.is_empty() => Ok(role.to_owned()),
        _ => err(format!("{function}: Role must be !GetAtt <role>.Arn")),
    }
}

// ------------------------------------------------------------------------------------ requests

fn table_arn(name: &str) -> String {
    if name.starts_with("arn:") {
        name.to_owned()
    } else {
        format!("arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}")
    }
}

/// `…:service-revision/C/S/ID` or `…:service-deployment/C/S/ID` → `…:service/C/S`.
/// `arn:aws:sqs:REGION:ACCOUNT:NAME` from a queue URL `http(s)://HOST/ACCOUNT/NAME`.
fn queue_arn(url: &str) -> Option<String> {
    let mut parts = url.rsplit('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let account = parts
        .next()
        .filter(|a| a.chars().all(|c| c.is_ascii_digit()))?;
    Some(format!("arn:aws:sqs:{REGION}:{account}:{name}"))
}

fn service_of(arn: &str) -> Option<String> {
    let (head, path) = arn.rsplit_once(':')?;
    let mut parts = path.splitn(4, '/');
    let (_kind, cluster, service) = (parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{head}:service/{cluster}/{service}"))
}

fn json_strings(body: &Json, key: &str) -> Vec<String> {
    body.get(key)
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Tags in an ELBv2 query request (`Tags.member.N.Key/Value`), in order.
fn form_tags(form: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut tags = Vec::new();
    for n in 1.. {
        let Some(key) = form.get(&format!("Tags.member.{n}.Key")) else {
            break;
        };
        let value = form
            .get(&format!("Tags.member.{n}.Value"))
            .cloned()
            .unwrap_or_default();
        tags.push((key.clone(), value));
    }
    tags
}

fn with_request_tags(mut request: AuthzRequest, tags: &[(String, String)]) -> AuthzRequest {
    for (k, v) in tags {
        request = request.with(&format!("aws:RequestTag/{k}"), vec![v.clone()]);
    }
    if !tags.is_empty() {
        request = request.with("aws:TagKeys", tags.iter().map(|(k, _)| k.clone()).collect());
    }
    request
}

/// `…:service/<cluster>/<name>` of a service named in an ECS request (by name or ARN).
fn ecs_service_arn(body: &Json, service: &str) -> String {
    if service.starts_with("arn:") {
        return service.to_owned();
    }
    let cluster = body
        .get("cluster")
        .and_then(Json::as_str)
        .unwrap_or("default");
    let cluster = cluster.rsplit('/').next().unwrap_or(cluster);
    format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service/{cluster}/{service}")
}

/// Tags in an ECS request (`tags: [{key, value}]`), in order.
fn ecs_tags(body: &Json) -> Vec<(String, String)> {
    body.get("tags")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t.get("key")?.as_str()?.to_owned(),
                t.get("value")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ))
        })
        .collect()
}

/// `request` with `aws:ResourceTag/KEY` for each tag the resource has now.
async fn with_resource_tags(
    mut request: AuthzRequest,
    resource_tags: &dyn ResourceTags,
    arn: &str,
) -> AuthzRequest {
    for (k, v) in resource_tags.tags(arn).await {
        request = request.with(&format!("aws:ResourceTag/{k}"), vec![v]);
    }
    request
}

/// What a call on an existing resource needs to know about it: its tags (ELBv2 rules and
/// target groups from moto, ECS services from the emulator).
pub trait ResourceTags: Send + Sync {
    fn tags<'a>(&'a self, arn: &'a str) -> crate::engine::BoxFuture<'a, Vec<(String, String)>>;
}

/// The IAM requests AWS authorises for one call, or why the evaluator cannot tell.
pub async fn requests_for(
    service: Service,
    operation: &str,
    body: &[u8],
    resource_tags: &dyn ResourceTags,
) -> Result<Vec<AuthzRequest>, String> {
    match service {
        Service::Ecs => {
            let body: Json = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let action = format!("ecs:{operation}");
            let mut out = Vec::new();
            match operation {
                "DescribeServiceRevisions" | "DescribeServiceDeployments" => {
                    let key = if operation == "DescribeServiceRevisions" {
                        "serviceRevisionArns"
                    } else {
                        "serviceDeploymentArns"
                    };
                    for arn in json_strings(&body, key) {
                        let service = service_of(&arn).ok_or(format!("not an ECS ARN: {arn}"))?;
                        out.push(AuthzRequest::new(&action, &service));
                        out.push(AuthzRequest::new(&action, &arn));
                    }
                }
                "ListServiceDeployments" => {
                    let service = body.get("service").and_then(Json::as_str).unwrap_or("");
                    let arn = if service.starts_with("arn:") {
                        service.to_owned()
                    } else {
                        let cluster = body
                            .get("cluster")
                            .and_then(Json::as_str)
                            .unwrap_or("default");
                        let cluster = cluster.rsplit('/').next().unwrap_or(cluster);
                        format!("arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service/{cluster}/{service}")
                    };
                    out.push(AuthzRequest::new(&action, &arn));
                }
                "DescribeTaskDefinition" => out.push(AuthzRequest::new(&action, "*")),
                "CreateService" => {
                    let name = body
                        .get("serviceName")
                        .and_then(Json::as_str)
                        .ok_or("no serviceName")?;
                    let arn = ecs_service_arn(&body, name);
                    let tags = ecs_tags(&body);
                    out.push(with_request_tags(AuthzRequest::new(&action, &arn), &tags));
                    if !tags.is_empty() {
                        // Tags on create need ecs:TagResource too, with ecs:CreateAction.
                        out.push(
                            with_request_tags(AuthzRequest::new("ecs:TagResource", &arn), &tags)
                                .with("ecs:CreateAction", vec!["CreateService".into()]),
                        );
                    }
                }
                "UpdateService" | "DeleteService" | "DescribeServices" => {
                    let services = if operation == "DescribeServices" {
                        json_strings(&body, "services")
                    } else {
                        body.get("service")
                            .and_then(Json::as_str)
                            .map(|s| vec![s.to_owned()])
                            .unwrap_or_default()
                    };
                    for service in services {
                        let arn = ecs_service_arn(&body, &service);
                        out.push(
                            with_resource_tags(
                                AuthzRequest::new(&action, &arn),
                                resource_tags,
                                &arn,
                            )
                            .await,
                        );
                    }
                }
                "TagResource" | "UntagResource" | "ListTagsForResource" => {
                    let arn = body
                        .get("resourceArn")
                        .and_then(Json::as_str)
                        .ok_or("no resourceArn")?
                        .to_owned();
                    let mut request = AuthzRequest::new(&action, &arn);
                    if operation == "TagResource" {
                        request = with_request_tags(request, &ecs_tags(&body));
                    }
                    if operation == "UntagResource" {
                        request = request.with("aws:TagKeys", json_strings(&body, "tagKeys"));
                    }
                    out.push(with_resource_tags(request, resource_tags, &arn).await);
                }
                other => return Err(format!("ecs:{other} is not modelled")),
            }
            Ok(out)
        }
        Service::DynamoDb => {
            let body: Json = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let table = |v: &Json| v.get("TableName").and_then(Json::as_str).map(table_arn);
            match operation {
                "Query" | "Scan" | "GetItem" | "PutItem" | "UpdateItem" | "DeleteItem" => {
                    let table = table(&body).ok_or("no TableName")?;
                    Ok(vec![AuthzRequest::new(
                        &format!("dynamodb:{operation}"),
                        &table,
                    )])
                }
                "TransactWriteItems" => {
                    let mut out = Vec::new();
                    for item in body
                        .get("TransactItems")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                    {
                        for (kind, action) in [
                            ("Update", "dynamodb:UpdateItem"),
                            ("Put", "dynamodb:PutItem"),
                            ("Delete", "dynamodb:DeleteItem"),
                            ("ConditionCheck", "dynamodb:ConditionCheckItem"),
                        ] {
                            if let Some(table) = item.get(kind).and_then(table) {
                                out.push(AuthzRequest::new(action, &table));
                            }
                        }
                    }
                    Ok(out)
                }
                other => Err(format!("dynamodb:{other} is not modelled")),
            }
        }
        Service::Sqs => {
            let body: Json = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let queue = body
                .get("QueueUrl")
                .and_then(Json::as_str)
                .and_then(queue_arn)
                .ok_or("no QueueUrl naming a queue")?;
            match operation {
                // A batch is authorised as the single-message action, once for the queue.
                "SendMessage" | "SendMessageBatch" => {
                    Ok(vec![AuthzRequest::new("sqs:SendMessage", &queue)])
                }
                "ReceiveMessage" | "GetQueueAttributes" => {
                    Ok(vec![AuthzRequest::new(&format!("sqs:{operation}"), &queue)])
                }
                "DeleteMessage" | "DeleteMessageBatch" => {
                    Ok(vec![AuthzRequest::new("sqs:DeleteMessage", &queue)])
                }
                other => Err(format!("sqs:{other} is not modelled")),
            }
        }
        Service::Elbv2 => {
            let form: BTreeMap<String, String> =
                form_urlencoded::parse(body).into_owned().collect();
            let action = format!("elasticloadbalancing:{operation}");
            match operation {
                o if o.starts_with("Describe") => Ok(vec![AuthzRequest::new(&action, "*")]),
                "CreateRule" => {
                    let listener = form.get("ListenerArn").ok_or("no ListenerArn")?;
                    let tags = form_tags(&form);
                    let mut out = vec![with_request_tags(
                        AuthzRequest::new(&action, listener),
                        &tags,
                    )];
                    if !tags.is_empty() {
                        // Tags given on creation are authorised as AddTags on the new rule,
                        // whose ID is not known yet: any ID under the listener.
                        let rule = format!(
                            "{}/{}",
                            listener.replacen(":listener/", ":listener-rule/", 1),
                            "0000000000000000"
                        );
                        out.push(
                            with_request_tags(
                                AuthzRequest::new("elasticloadbalancing:AddTags", &rule),
                                &tags,
                            )
                            .with(
                                "elasticloadbalancing:CreateAction",
                                vec!["CreateRule".into()],
                            ),
                        );
                    }
                    Ok(out)
                }
                "DeleteRule" => {
                    let rule = form.get("RuleArn").ok_or("no RuleArn")?;
                    let mut request = AuthzRequest::new(&action, rule);
                    for (k, v) in resource_tags.tags(rule).await {
                        request = request.with(&format!("aws:ResourceTag/{k}"), vec![v]);
                    }
                    Ok(vec![request])
                }
                "ModifyRule" => {
                    let rule = form.get("RuleArn").ok_or("no RuleArn")?;
                    Ok(vec![
                        with_resource_tags(AuthzRequest::new(&action, rule), resource_tags, rule)
                            .await,
                    ])
                }
                "CreateTargetGroup" => {
                    let name = form.get("Name").ok_or("no Name")?;
                    // The new group's ID is not known before it exists: any ID of that name.
                    let arn = format!(
                        "arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT_ID}:targetgroup/{name}/0000000000000000"
                    );
                    let tags = form_tags(&form);
                    let mut out = vec![with_request_tags(AuthzRequest::new(&action, &arn), &tags)];
                    if !tags.is_empty() {
                        out.push(
                            with_request_tags(
                                AuthzRequest::new("elasticloadbalancing:AddTags", &arn),
                                &tags,
                            )
                            .with(
                                "elasticloadbalancing:CreateAction",
                                vec!["CreateTargetGroup".into()],
                            ),
                        );
                    }
                    Ok(out)
                }
                "DeleteTargetGroup"
                | "ModifyTargetGroup"
                | "ModifyTargetGroupAttributes"
                | "RegisterTargets"
                | "DeregisterTargets" => {
                    let tg = form.get("TargetGroupArn").ok_or("no TargetGroupArn")?;
                    Ok(vec![
                        with_resource_tags(AuthzRequest::new(&action, tg), resource_tags, tg).await,
                    ])
                }
                "AddTags" => {
                    let tags = form_tags(&form);
                    let mut out = Vec::new();
                    for n in 1.. {
                        let Some(arn) = form.get(&format!("ResourceArns.member.{n}")) else {
                            break;
                        };
                        let mut request = with_request_tags(AuthzRequest::new(&action, arn), &tags);
                        for (k, v) in resource_tags.tags(arn).await {
                            request = request.with(&format!("aws:ResourceTag/{k}"), vec![v]);
                        }
                        out.push(request);
                    }
                    Ok(out)
                }
                other => Err(format!("elasticloadbalancing:{other} is not modelled")),
            }
        }
        Service::CloudWatch => {
            // CloudWatch's metric actions have no resource types: authorised on `*`.
            let action = format!("cloudwatch:{operation}");
            match operation {
                "GetMetricData" | "GetMetricStatistics" | "ListMetrics" => {
                    Ok(vec![AuthzRequest::new(&action, "*")])
                }
                "PutMetricData" => {
                    let input: ciborium::Value =
                        ciborium::from_reader(body).map_err(|e| e.to_string())?;
                    let namespace = input
                        .as_map()
                        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("Namespace")))
                        .and_then(|(_, v)| v.as_text())
                        .unwrap_or_default()
                        .to_owned();
                    Ok(vec![
                        AuthzRequest::new(&action, "*")
                            .with("cloudwatch:namespace", vec![namespace]),
                    ])
                }
                other => Err(format!("cloudwatch:{other} is not modelled")),
            }
        }
    }
}

// ------------------------------------------------------------------------------------ the proxy

/// A call the proxy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub operation: String,
    pub action: String,
    pub resource: String,
    pub message: String,
}

/// Reads a resource's tags from the stand-ins themselves (not through any fault proxy, so no
/// call is counted or faulted twice): ELBv2 from moto, ECS services from the emulator (its
/// `ListTagsForResource`, which shows in the emulator's call log).
struct MotoTags {
    elbv2: aws_sdk_elasticloadbalancingv2::Client,
    ecs: aws_sdk_ecs::Client,
}

impl ResourceTags for MotoTags {
    fn tags<'a>(&'a self, arn: &'a str) -> crate::engine::BoxFuture<'a, Vec<(String, String)>> {
        Box::pin(async move {
            if arn.starts_with("arn:aws:ecs:") {
                return match self
                    .ecs
                    .list_tags_for_resource()
                    .resource_arn(arn)
                    .send()
                    .await
                {
                    Ok(answer) => answer
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                        .collect(),
                    Err(_) => Vec::new(),
                };
            }
            match self.elbv2.describe_tags().resource_arns(arn).send().await {
                Ok(answer) => answer
                    .tag_descriptions()
                    .iter()
                    .flat_map(|d| d.tags())
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                    .collect(),
                Err(_) => Vec::new(),
            }
        })
    }
}

struct Shared {
    function: String,
    role: Role,
    forward: Endpoints,
    tags: MotoTags,
    client: Client<HttpConnector, Full<Bytes>>,
    denials: Mutex<Vec<Denial>>,
    allowed: Mutex<usize>,
}

/// An HTTP proxy between one function process and the stand-ins that only forwards what the
/// function's role allows; it stops when dropped.
pub struct AuthorisingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for AuthorisingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorisingProxy")
            .field("addr", &self.addr)
            .field("function", &self.shared.function)
            .finish_non_exhaustive()
    }
}

impl AuthorisingProxy {
    /// A proxy for `function` with the role of [`Roles::world`], forwarding to `forward` (the
    /// stand-ins, or a fault proxy in front of them) and reading resource tags from `moto`.
    pub async fn world(
        function: &str,
        forward: &Endpoints,
        moto: &Endpoints,
    ) -> Result<AuthorisingProxy, IamError> {
        let role = Roles::world()?.role(function)?.clone();
        Ok(Self::start(function, role, forward, moto).await)
    }

    pub async fn start(
        function: &str,
        role: Role,
        forward: &Endpoints,
        moto: &Endpoints,
    ) -> AuthorisingProxy {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let config = crate::aws::sdk_config(moto).await;
        let shared = Arc::new(Shared {
            function: function.to_owned(),
            role,
            forward: forward.clone(),
            tags: MotoTags {
                elbv2: crate::aws::elbv2_client(&config),
                ecs: crate::aws::ecs_client(&config),
            },
            client: Client::builder(TokioExecutor::new()).build_http(),
            denials: Mutex::new(Vec::new()),
            allowed: Mutex::new(0),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        AuthorisingProxy {
            addr,
            shared,
            server,
        }
    }

    /// Every service through this proxy: give these to the function (`function_env`).
    pub fn endpoints(&self) -> Endpoints {
        let url = format!("http://{}", self.addr);
        Endpoints {
            ecs: url.clone(),
            elbv2: url.clone(),
            cloudwatch: url.clone(),
            dynamodb: url.clone(),
            sqs: url,
        }
    }

    pub fn denials(&self) -> Vec<Denial> {
        self.shared.denials.lock().expect("denials").clone()
    }

    /// How many calls were allowed and forwarded.
    pub fn allowed(&self) -> usize {
        *self.shared.allowed.lock().expect("allowed")
    }
}

impl Drop for AuthorisingProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { handle(&shared, request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[derive(Debug)]
struct Broken(String);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Broken {}

async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Broken> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| Broken(e.to_string()))?
        .to_bytes();
    let (service, operation) = identify_request(parts.uri.path(), target.as_deref(), &body);
    let refused = match requests_for(service, &operation, &body, &shared.tags).await {
        Err(why) => Some((operation.clone(), "*".to_owned(), why)),
        Ok(requests) => requests
            .into_iter()
            .find(|r| !shared.role.allows(r))
            .map(|r| {
                let why = format!(
                    "User: arn:aws:sts::{ACCOUNT_ID}:assumed-role/{}/{} is not authorized to \
                     perform: {} on resource: {} because no identity-based policy allows the {} \
                     action",
                    shared.role.name, shared.function, r.action, r.resource, r.action
                );
                (r.action, r.resource, why)
            }),
    };
    if let Some((action, resource, message)) = refused {
        shared.denials.lock().expect("denials").push(Denial {
            operation: operation.clone(),
            action,
            resource,
            message: message.clone(),
        });
        let (status, code) = match service {
            Service::Elbv2 => (403, "AccessDenied"),
            Service::Ecs | Service::DynamoDb | Service::Sqs => (400, "AccessDeniedException"),
            Service::CloudWatch => (403, "AccessDenied"),
        };
        return Ok(error_response_with(service, status, code, &message));
    }
    *shared.allowed.lock().expect("allowed") += 1;
    forward(shared, service, parts, body).await
}

async fn forward(
    shared: &Shared,
    service: Service,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Broken> {
    let base = match service {
        Service::Ecs => &shared.forward.ecs,
        Service::Elbv2 => &shared.forward.elbv2,
        Service::DynamoDb => &shared.forward.dynamodb,
        Service::CloudWatch => &shared.forward.cloudwatch,
        Service::Sqs => &shared.forward.sqs,
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: hyper::Uri = format!("{base}{path}")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| Broken(e.to_string()))?;
    let mut builder = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            builder = builder.header(name, value);
        }
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| Broken(e.to_string()))?;
    // An upstream that drops the connection (a fault proxy's doing) drops this one too.
    let response = shared
        .client
        .request(request)
        .await
        .map_err(|e| Broken(e.to_string()))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| Broken(e.to_string()))?
        .to_bytes();
    let mut answer = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            answer = answer.header(name, value);
        }
    }
    answer
        .body(Full::new(body))
        .map_err(|e| Broken(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match(
            "arn:aws:ecs:*:1:service/shop/*",
            "arn:aws:ecs:r:1:service/shop/web"
        ));
        assert!(!wildcard_match(
            "arn:aws:ecs:*:1:service/shop/*",
            "arn:aws:ecs:r:1:service/shopping/web"
        ));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXbYbc"));
        assert!(!wildcard_match("abc", "abcd"));
    }

    /// A template with one function whose role holds the retention statements as skewguard
    /// scopes them by tag.
    const RETENTION_TEMPLATE: &str = r#"
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/reconciler
      Role: !GetAtt FnRole.Arn
  FnRole:
    Type: AWS::IAM::Role
    Properties:
      Policies:
        - PolicyName: retention
          PolicyDocument:
            Statement:
              - Effect: Allow
                Action: ecs:CreateService
                Resource: !Sub arn:aws:ecs:${AWS::Region}:${AWS::AccountId}:service/shop/*
                Condition:
                  StringEquals:
                    aws:RequestTag/skewguard:managed: "true"
                  ForAllValues:StringEquals:
                    aws:TagKeys: [skewguard:managed, skewguard:retains]
              - Effect: Allow
                Action: ecs:TagResource
                Resource: "*"
                Condition:
                  StringEquals:
                    ecs:CreateAction: CreateService
              - Effect: Allow
                Action: [ecs:DeleteService, ecs:UpdateService]
                Resource: "*"
                Condition:
                  StringEquals:
                    aws:ResourceTag/skewguard:managed: "true"
              - Effect: Allow
                Action: elasticloadbalancing:CreateTargetGroup
                Resource: "*"
                Condition:
                  StringLike:
                    aws:RequestTag/skewguard:retains: "*"
              - Effect: Allow
                Action: elasticloadbalancing:AddTags
                Resource: "*"
                Condition:
                  StringEquals:
                    elasticloadbalancing:CreateAction: CreateTargetGroup
              - Effect: Allow
                Action: elasticloadbalancing:DeleteTargetGroup
                Resource: "*"
                Condition:
                  "Null":
                    aws:ResourceTag/skewguard:managed: "false"
              - Effect: Allow
                Action: cloudwatch:GetMetricData
                Resource: "*"
"#;

    fn retention_role() -> Role {
        Roles::from_yaml(RETENTION_TEMPLATE, &WorldValues::world())
            .unwrap()
            .role("reconciler")
            .unwrap()
            .clone()
    }

    /// Tags a test says each resource has.
    struct Tagged(BTreeMap<String, Vec<(String, String)>>);

    impl ResourceTags for Tagged {
        fn tags<'a>(&'a self, arn: &'a str) -> crate::engine::BoxFuture<'a, Vec<(String, String)>> {
            Box::pin(async move { self.0.get(arn).cloned().unwrap_or_default() })
        }
    }

    fn tag(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    async fn allowed(
        role: &Role,
        service: Service,
        operation: &str,
        body: &[u8],
        tags: &Tagged,
    ) -> Result<bool, String> {
        let requests = requests_for(service, operation, body, tags).await?;
        assert!(!requests.is_empty());
        Ok(requests.iter().all(|r| role.allows(r)))
    }

    #[tokio::test]
    async fn request_tags_and_tag_keys_scope_create_service() {
        let role = retention_role();
        let none = Tagged(BTreeMap::new());
        let create = |tags: serde_json::Value| {
            serde_json::json!({"cluster": "shop", "serviceName": "web-v1", "taskDefinition": "web:1", "tags": tags})
                .to_string()
        };
        let ok = create(serde_json::json!([
            {"key": "skewguard:managed", "value": "true"},
            {"key": "skewguard:retains", "value": "v1"},
        ]));
        assert_eq!(
            allowed(&role, Service::Ecs, "CreateService", ok.as_bytes(), &none).await,
            Ok(true)
        );
        // The tag missing, another value, or a key outside the ForAllValues set: denied.
        for tags in [
            serde_json::json!([]),
            serde_json::json!([{"key": "skewguard:managed", "value": "yes"}]),
            serde_json::json!([
                {"key": "skewguard:managed", "value": "true"},
                {"key": "owner", "value": "me"},
            ]),
        ] {
            let body = create(tags.clone());
            assert_eq!(
                allowed(&role, Service::Ecs, "CreateService", body.as_bytes(), &none).await,
                Ok(false),
                "{tags}"
            );
        }
        // Another cluster is outside the resource.
        let other = ok.replace("\"shop\"", "\"other\"");
        assert_eq!(
            allowed(
                &role,
                Service::Ecs,
                "CreateService",
                other.as_bytes(),
                &none
            )
            .await,
            Ok(false)
        );
    }

    #[tokio::test]
    async fn resource_tags_scope_delete_service_and_delete_target_group() {
        let role = retention_role();
        let managed = ecs_service_arn(&serde_json::json!({"cluster": "shop"}), "web-v1");
        let users = ecs_service_arn(&serde_json::json!({"cluster": "shop"}), "web");
        let tg = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-v1/0123456789abcdef";
        let users_tg = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg1/0123456789abcdef";
        let tags = Tagged(BTreeMap::from([
            (managed.clone(), vec![tag("skewguard:managed", "true")]),
            (users.clone(), vec![tag("team", "shop")]),
            (tg.to_owned(), vec![tag("skewguard:managed", "true")]),
        ]));
        let delete = |service: &str| {
            serde_json::json!({"cluster": "shop", "service": service, "force": true}).to_string()
        };
        assert_eq!(
            allowed(
                &role,
                Service::Ecs,
                "DeleteService",
                delete("web-v1").as_bytes(),
                &tags
            )
            .await,
            Ok(true)
        );
        assert_eq!(
            allowed(
                &role,
                Service::Ecs,
                "DeleteService",
                delete(&users).as_bytes(),
                &tags
            )
            .await,
            Ok(false),
            "the user's own service is not skewguard's to delete"
        );
        let form = |arn: &str| format!("Action=DeleteTargetGroup&TargetGroupArn={arn}");
        assert_eq!(
            allowed(
                &role,
                Service::Elbv2,
                "DeleteTargetGroup",
                form(tg).as_bytes(),
                &tags
            )
            .await,
            Ok(true)
        );
        assert_eq!(
            allowed(
                &role,
                Service::Elbv2,
                "DeleteTargetGroup",
                form(users_tg).as_bytes(),
                &tags
            )
            .await,
            Ok(false),
            "Null false: the tag must be there"
        );
    }

    #[tokio::test]
    async fn create_target_group_authorises_its_tags_and_metrics_are_read_on_any_resource() {
        let role = retention_role();
        let none = Tagged(BTreeMap::new());
        let tagged = "Action=CreateTargetGroup&Name=web-v1&Tags.member.1.Key=skewguard%3Aretains&Tags.member.1.Value=v1";
        let requests = requests_for(
            Service::Elbv2,
            "CreateTargetGroup",
            tagged.as_bytes(),
            &none,
        )
        .await
        .unwrap();
        assert_eq!(
            requests
                .iter()
                .map(|r| r.action.as_str())
                .collect::<Vec<_>>(),
            [
                "elasticloadbalancing:CreateTargetGroup",
                "elasticloadbalancing:AddTags"
            ]
        );
        assert!(requests.iter().all(|r| role.allows(r)));
        let untagged = "Action=CreateTargetGroup&Name=web-v1";
        assert_eq!(
            allowed(
                &role,
                Service::Elbv2,
                "CreateTargetGroup",
                untagged.as_bytes(),
                &none
            )
            .await,
            Ok(false)
        );
        let mut cbor = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![(
                ciborium::Value::Text("Namespace".into()),
                ciborium::Value::Text("AWS/ApplicationELB".into()),
            )]),
            &mut cbor,
        )
        .unwrap();
        assert_eq!(
            allowed(&role, Service::CloudWatch, "GetMetricData", &cbor, &none).await,
            Ok(true)
        );
        assert_eq!(
            allowed(&role, Service::CloudWatch, "PutMetricData", &cbor, &none).await,
            Ok(false)
        );
    }

    #[test]
    fn set_qualifiers_follow_iam() {
        let wanted = ["a".to_owned(), "b".to_owned()];
        let some = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        use Operator::StringEquals as Eq;
        // ForAllValues holds vacuously for an absent key; ForAnyValue does not.
        assert!(condition_holds(SetQualifier::ForAll, Eq, None, &wanted));
        assert!(!condition_holds(SetQualifier::ForAny, Eq, None, &wanted));
        assert!(!condition_holds(SetQualifier::Single, Eq, None, &wanted));
        assert!(condition_holds(
            SetQualifier::ForAll,
            Eq,
            Some(&some(&["a", "b"])),
            &wanted
        ));
        assert!(!condition_holds(
            SetQualifier::ForAll,
            Eq,
            Some(&some(&["a", "c"])),
            &wanted
        ));
        assert!(condition_holds(
            SetQualifier::ForAny,
            Eq,
            Some(&some(&["a", "c"])),
            &wanted
        ));
        assert!(condition_holds(
            SetQualifier::Single,
            Operator::StringLike,
            Some(&some(&["v1-blue"])),
            &["v1-*".to_owned()]
        ));
        let yes = ["true".to_owned()];
        assert!(condition_holds(
            SetQualifier::Single,
            Operator::Null,
            None,
            &yes
        ));
        assert!(!condition_holds(
            SetQualifier::Single,
            Operator::Null,
            Some(&some(&["x"])),
            &yes
        ));
        // Null with ForAllValues is refused when the template is read.
        let bad = RETENTION_TEMPLATE.replacen("\"Null\":", "ForAllValues:Null:", 1);
        let err = Roles::from_yaml(&bad, &WorldValues::world()).unwrap_err();
        assert!(err.0.contains("ForAllValues:Null is not modelled"), "{err}");
    }

    #[test]
    fn service_of_a_revision() {
        assert_eq!(
            service_of("arn:aws:ecs:us-east-1:1:service-revision/shop/web/123").as_deref(),
            Some("arn:aws:ecs:us-east-1:1:service/shop/web")
        );
    }
}
