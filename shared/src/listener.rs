//! A plain model of an ALB listener's rules, and how the ALB routes a request through them.
//!
//! Used by the pin planner (to place pins and prove they steal nothing), by the local data plane
//! and by `skewguard explain`.

use std::net::IpAddr;

/// Listener-rule priority; the default rule is evaluated last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// 1–50000; lower numbers are evaluated first.
    Number(u32),
    /// The listener's default rule.
    Default,
}

impl Priority {
    /// The number, or `None` for the default rule.
    pub fn number(self) -> Option<u32> {
        match self {
            Priority::Number(n) => Some(n),
            Priority::Default => None,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Priority::Number(n) => write!(f, "{n}"),
            Priority::Default => f.write_str("default"),
        }
    }
}

/// One rule of a listener: a request matching every condition gets the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRule {
    /// The rule's ARN.
    pub arn: String,
    /// Where it is evaluated.
    pub priority: Priority,
    /// All must match (none: every request matches, as for the default rule).
    pub conditions: Vec<Condition>,
    /// What a matching request gets.
    pub action: RuleAction,
    /// Features of this rule that a pin cannot reproduce (authentication actions, transforms):
    /// a pin copied from such a production rule would let pinned requests bypass them.
    pub uncopyable: Vec<String>,
}

/// What a rule does with a request it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    /// Forward to target groups, shared by weight.
    Forward(Vec<WeightedTarget>),
    /// Answer directly (skewguard's retired-pin catch-all answers 409 this way).
    FixedResponse {
        /// HTTP status code: 2XX, 4XX or 5XX.
        status_code: u16,
        /// `Content-Type` of the answer, if set.
        content_type: Option<String>,
        /// The answer's body, if any.
        body: Option<String>,
    },
    /// Redirects, authentication and anything else skewguard only needs to recognise.
    Other(String),
}

/// One target group of a forward action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedTarget {
    /// The target group's ARN.
    pub target_group_arn: String,
    /// Relative weight, 0–999; 0 sends it nothing.
    pub weight: u32,
}

/// One condition of a listener rule, as the ALB evaluates it: it matches when any of its values
/// matches. Host, path, header and query values may hold the `*` and `?` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Host names (case-insensitive; the port is ignored).
    HostHeader(Vec<String>),
    /// Path patterns (case-sensitive).
    PathPattern(Vec<String>),
    /// A header by name (case-insensitive) with any of the values (case-insensitive): how a
    /// pin matches the deployment ID header, or the cookie carrying it.
    HttpHeader {
        /// The header's name.
        name: String,
        /// Values, any of which matches.
        values: Vec<String>,
    },
    /// Query parameters (case-insensitive).
    QueryString(Vec<QueryMatch>),
    /// Methods, exactly (`GET`, `POST`…).
    HttpRequestMethod(Vec<String>),
    /// Source address blocks in CIDR form.
    SourceIp(Vec<String>),
    /// A condition skewguard cannot evaluate or copy (e.g. regex values); never matches here.
    Unsupported(String),
}

/// One `key=value` alternative of a query-string condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueryMatch {
    /// The parameter's name; `None` matches the value under any name.
    pub key: Option<String>,
    /// The parameter's value.
    pub value: String,
}

impl Condition {
    /// Values the ALB counts against its "match evaluations per rule" quota.
    pub fn match_evaluations(&self) -> usize {
        match self {
            Condition::HostHeader(v)
            | Condition::PathPattern(v)
            | Condition::HttpRequestMethod(v)
            | Condition::SourceIp(v) => v.len(),
            Condition::HttpHeader { values, .. } => values.len(),
            Condition::QueryString(pairs) => pairs.len(),
            Condition::Unsupported(_) => 1,
        }
    }

    /// Wildcard characters, counted against the ALB's "wildcards per rule" quota.
    pub fn wildcards(&self) -> usize {
        let count = |s: &str| s.chars().filter(|c| matches!(c, '*' | '?')).count();
        match self {
            Condition::HostHeader(v) | Condition::PathPattern(v) => {
                v.iter().map(|s| count(s)).sum()
            }
            Condition::HttpHeader { values, .. } => values.iter().map(|s| count(s)).sum(),
            Condition::QueryString(pairs) => pairs
                .iter()
                .map(|p| count(&p.value) + p.key.as_deref().map_or(0, count))
                .sum(),
            Condition::HttpRequestMethod(_)
            | Condition::SourceIp(_)
            | Condition::Unsupported(_) => 0,
        }
    }

    /// A canonical form, so that two rules with the same conditions in another order compare equal.
    pub fn canonical(&self) -> Condition {
        let sorted = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v
        };
        match self {
            Condition::HostHeader(v) => {
                Condition::HostHeader(sorted(&v.iter().map(|s| s.to_ascii_lowercase()).collect()))
            }
            Condition::PathPattern(v) => Condition::PathPattern(sorted(v)),
            Condition::HttpHeader { name, values } => Condition::HttpHeader {
                name: name.to_ascii_lowercase(),
                values: sorted(&values.iter().map(|s| s.to_ascii_lowercase()).collect()),
            },
            Condition::QueryString(pairs) => {
                let mut pairs: Vec<QueryMatch> = pairs
                    .iter()
                    .map(|p| QueryMatch {
                        key: p.key.as_ref().map(|k| k.to_ascii_lowercase()),
                        value: p.value.to_ascii_lowercase(),
                    })
                    .collect();
                pairs.sort();
                Condition::QueryString(pairs)
            }
            Condition::HttpRequestMethod(v) => Condition::HttpRequestMethod(sorted(v)),
            Condition::SourceIp(v) => Condition::SourceIp(sorted(v)),
            Condition::Unsupported(d) => Condition::Unsupported(d.clone()),
        }
    }
}

/// Canonical, order-independent form of a rule's conditions.
pub fn canonical_conditions(conditions: &[Condition]) -> Vec<String> {
    let mut all: Vec<String> = conditions
        .iter()
        .map(|c| format!("{:?}", c.canonical()))
        .collect();
    all.sort();
    all
}

/// The parts of an HTTP request the ALB routes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The `Host` header, with any port.
    pub host: String,
    /// The path, without the query.
    pub path: String,
    /// The method, upper case.
    pub method: String,
    /// Headers as `(name, value)`, in order.
    pub headers: Vec<(String, String)>,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The client's address, when known.
    pub source_ip: Option<IpAddr>,
}

impl Request {
    /// A `GET` of `path` on host `localhost`, without headers or query.
    pub fn get(path: &str) -> Self {
        Self {
            host: "localhost".to_owned(),
            path: path.to_owned(),
            method: "GET".to_owned(),
            ..Self::default()
        }
    }

    /// The same request with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same request with one more query parameter.
    pub fn with_query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The same request to another host.
    pub fn with_host(mut self, host: &str) -> Self {
        host.clone_into(&mut self.host);
        self
    }
}

impl Condition {
    /// Whether the ALB would find this condition true for `request`.
    pub fn matches(&self, request: &Request) -> bool {
        match self {
            Condition::HostHeader(patterns) => {
                let host =
                    request
                        .host
                        .rsplit_once(':')
                        .map_or(request.host.as_str(), |(h, port)| {
                            if port.chars().all(|c| c.is_ascii_digit()) {
                                h
                            } else {
                                request.host.as_str()
                            }
                        });
                patterns.iter().any(|p| wildcard_match(p, host, true))
            }
            Condition::PathPattern(patterns) => patterns
                .iter()
                .any(|p| wildcard_match(p, &request.path, false)),
            Condition::HttpHeader { name, values } => request
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .any(|(_, v)| values.iter().any(|p| wildcard_match(p, v, true))),
            Condition::QueryString(pairs) => pairs.iter().any(|pair| {
                request.query.iter().any(|(k, v)| {
                    pair.key
                        .as_deref()
                        .is_none_or(|pk| wildcard_match(pk, k, true))
                        && wildcard_match(&pair.value, v, true)
                })
            }),
            Condition::HttpRequestMethod(methods) => methods.iter().any(|m| m == &request.method),
            Condition::SourceIp(cidrs) => request
                .source_ip
                .is_some_and(|ip| cidrs.iter().any(|c| cidr_contains(c, ip))),
            Condition::Unsupported(_) => false,
        }
    }
}

impl ListenerRule {
    /// Whether every condition matches `request`.
    pub fn matches(&self, request: &Request) -> bool {
        self.conditions.iter().all(|c| c.matches(request))
    }

    /// Whether this is the listener's default rule.
    pub fn is_default(&self) -> bool {
        self.priority == Priority::Default
    }

    /// Target groups this rule forwards to with a non-zero weight.
    pub fn live_targets(&self) -> Vec<&str> {
        match &self.action {
            RuleAction::Forward(targets) => targets
                .iter()
                .filter(|t| t.weight > 0)
                .map(|t| t.target_group_arn.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every target group in the forward action, whatever its weight.
    pub fn forward_targets(&self) -> Vec<&str> {
        match &self.action {
            RuleAction::Forward(targets) => targets
                .iter()
                .map(|t| t.target_group_arn.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The rule a request reaches: rules in priority order, the default rule last.
pub fn route<'a>(rules: &'a [ListenerRule], request: &Request) -> Option<&'a ListenerRule> {
    let mut ordered: Vec<&ListenerRule> = rules.iter().collect();
    ordered.sort_by_key(|r| r.priority);
    ordered.into_iter().find(|r| r.matches(request))
}

/// ALB wildcard matching: `*` is any run of characters, `?` exactly one.
pub fn wildcard_match(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if case_insensitive {
            s.chars().map(|c| c.to_ascii_lowercase()).collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, t) = (norm(pattern), norm(text));
    // Iterative matcher with single-star backtracking: linear space, no recursion.
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut star_t) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            star_t = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            star_t += 1;
            ti = star_t;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (net, bits) = match cidr.split_once('/') {
        Some((net, bits)) => (net, bits.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            (u32::from(n) & mask) == (u32::from(i) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            (u128::from(n) & mask) == (u128::from(i) & mask)
        }
        _ => false,
    }
}

/// `arn:…:listener-rule/app/LB/ID/LISTENER/RULE` → `arn:…:listener/app/LB/ID/LISTENER`.
pub fn listener_arn_of_rule(rule_arn: &str) -> Option<String> {
    let (prefix, path) = rule_arn.split_once(":listener-rule/")?;
    let (listener_path, rule_id) = path.rsplit_once('/')?;
    if rule_id.is_empty() || listener_path.split('/').count() != 4 {
        return None;
    }
    Some(format!("{prefix}:listener/{listener_path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(tg: &str) -> RuleAction {
        RuleAction::Forward(vec![WeightedTarget {
            target_group_arn: tg.to_owned(),
            weight: 1,
        }])
    }

    fn rule(arn: &str, priority: Priority, conditions: Vec<Condition>, tg: &str) -> ListenerRule {
        ListenerRule {
            arn: arn.to_owned(),
            priority,
            conditions,
            action: forward(tg),
            uncopyable: Vec::new(),
        }
    }

    #[test]
    fn wildcards_follow_alb_semantics() {
        assert!(wildcard_match("*.example.com", "api.example.com", true));
        assert!(wildcard_match("/api/*", "/api/v2/cart", false));
        assert!(!wildcard_match("/API/*", "/api/v2/cart", false));
        assert!(wildcard_match("ABC", "abc", true));
        assert!(wildcard_match("a?c", "abc", true));
        assert!(!wildcard_match("a?c", "ac", true));
        assert!(wildcard_match("*; dpl=abc;*", "x=1; dpl=abc; y=2", true));
        assert!(!wildcard_match("*; dpl=abc;*", "x=1; dpl=abcd; y=2", true));
        assert!(wildcard_match("*", "", true));
        assert!(!wildcard_match("", "a", true));
        assert!(wildcard_match("a*b*c", "aXXbYYc", true));
        assert!(!wildcard_match("a*b*c", "aXXbYY", true));
    }

    #[test]
    fn routes_in_priority_order_with_the_default_last() {
        let rules = vec![
            rule("default", Priority::Default, vec![], "tg-default"),
            rule(
                "api",
                Priority::Number(20),
                vec![Condition::PathPattern(vec!["/api/*".into()])],
                "tg-api",
            ),
            rule(
                "pin",
                Priority::Number(10),
                vec![Condition::HttpHeader {
                    name: "X-Deployment-ID".into(),
                    values: vec!["abc".into()],
                }],
                "tg-pin",
            ),
        ];
        assert_eq!(route(&rules, &Request::get("/api/x")).unwrap().arn, "api");
        assert_eq!(
            route(&rules, &Request::get("/other")).unwrap().arn,
            "default"
        );
        let pinned = Request::get("/api/x").with_header("x-deployment-id", "ABC");
        assert_eq!(route(&rules, &pinned).unwrap().arn, "pin");
    }

    #[test]
    fn conditions_combine_with_and_values_with_or() {
        let r = rule(
            "r",
            Priority::Number(1),
            vec![
                Condition::HostHeader(vec!["shop.example.com".into(), "*.shop.example.com".into()]),
                Condition::QueryString(vec![QueryMatch {
                    key: Some("dpl".into()),
                    value: "abc".into(),
                }]),
            ],
            "tg",
        );
        let base = Request::get("/").with_query("dpl", "abc");
        assert!(r.matches(&base.clone().with_host("eu.shop.example.com:443")));
        assert!(!r.matches(&base.with_host("other.example.com")));
        assert!(
            !r.matches(
                &Request::get("/")
                    .with_host("shop.example.com")
                    .with_query("dpl", "abcd")
            )
        );
    }

    #[test]
    fn source_ip_and_method_conditions() {
        let mut req = Request::get("/");
        req.source_ip = Some("10.1.2.3".parse().unwrap());
        assert!(Condition::SourceIp(vec!["10.0.0.0/8".into()]).matches(&req));
        assert!(!Condition::SourceIp(vec!["192.168.0.0/16".into()]).matches(&req));
        assert!(Condition::HttpRequestMethod(vec!["GET".into()]).matches(&req));
        assert!(!Condition::HttpRequestMethod(vec!["POST".into()]).matches(&req));
    }

    #[test]
    fn listener_arn_is_derived_from_a_rule_arn() {
        assert_eq!(
            listener_arn_of_rule(
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee"
            )
            .as_deref(),
            Some("arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2")
        );
        assert_eq!(
            listener_arn_of_rule("arn:aws:elasticloadbalancing:x:listener/app/a/b/c"),
            None
        );
        assert_eq!(
            listener_arn_of_rule("arn:aws:elasticloadbalancing:x:listener-rule/app/a/b/c/"),
            None
        );
    }

    #[test]
    fn quota_counts() {
        let c = Condition::HttpHeader {
            name: "Cookie".into(),
            values: vec!["a=b".into(), "a=b;*".into(), "*; a=b".into()],
        };
        assert_eq!(c.match_evaluations(), 3);
        assert_eq!(c.wildcards(), 2);
    }
}
