//! Per-service settings: the hook's `hookDetails`, over function-level env defaults, over built-ins.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// ECS ends any lifecycle stage that lasts 24 hours; the hold must end well before that.
pub const MAX_SKEW_WINDOW: Duration = Duration::from_secs(23 * 3600);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_PRIORITY: u32 = 50_000;
/// ECS accepts a lifecycle hook `timeoutConfiguration.timeoutInMinutes` of at most 24 hours.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How many poll intervals of margin the hold needs inside the hook timeout: the last poll may
/// come up to one interval after the window ends, and the retiring call needs time too.
pub const HOOK_TIMEOUT_MARGIN_POLLS: u32 = 2;

/// The one key of `hookDetails` that is not a setting: how many times a hook has already asked
/// ECS to call again during a rollback, by stage (`{"PRODUCTION_TRAFFIC_SHIFT": 2}`). skewguard
/// returns it with `IN_PROGRESS`, and ECS passes it back on the next call of the same hook in
/// the same deployment.
pub const ROLLBACK_RETRIES_KEY: &str = "skewguardRollbackRetries";

/// Every key a user may set, with the env variable that sets its function-level default.
pub const SETTING_KEYS: [(&str, &str); 18] = [
    ("headerName", "SKEWGUARD_HEADER_NAME"),
    ("queryParam", "SKEWGUARD_QUERY_PARAM"),
    ("cookieName", "SKEWGUARD_COOKIE_NAME"),
    ("deploymentIdFrom", "SKEWGUARD_DEPLOYMENT_ID_FROM"),
    ("container", "SKEWGUARD_CONTAINER"),
    ("skewWindow", "SKEWGUARD_SKEW_WINDOW"),
    ("pollInterval", "SKEWGUARD_POLL_INTERVAL"),
    ("priorityRange", "SKEWGUARD_PRIORITY_RANGE"),
    ("onError", "SKEWGUARD_ON_ERROR"),
    ("afterWindow", "SKEWGUARD_AFTER_WINDOW"),
    ("hookTimeout", "SKEWGUARD_HOOK_TIMEOUT"),
    ("retention", "SKEWGUARD_RETENTION"),
    ("retainedTasks", "SKEWGUARD_RETAINED_TASKS"),
    ("maxVersions", "SKEWGUARD_MAX_VERSIONS"),
    ("maxAge", "SKEWGUARD_MAX_AGE"),
    ("minAge", "SKEWGUARD_MIN_AGE"),
    ("idleWindow", "SKEWGUARD_IDLE_WINDOW"),
    ("retentionStartTimeout", "SKEWGUARD_RETENTION_START_TIMEOUT"),
];

/// The `retention` mode when neither `hookDetails` nor `SKEWGUARD_RETENTION` sets one:
/// `service`, the mode that does not keep the user's deployment (and pipeline) waiting for the
/// skew window and keeps several previous versions, not one.
pub const DEFAULT_RETENTION: Retention = Retention::Service;
/// At most this long since a retained version left production (`maxAge`).
pub const MAX_RETENTION_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// ECS's default quota of tasks per service: the most `retainedTasks` can ask for.
pub const MAX_RETAINED_TASKS: u32 = 5_000;
/// ALB's default quota of target groups per load balancer: each retained version needs one.
pub const MAX_RETAINED_VERSIONS: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub header_name: String,
    pub query_param: Option<String>,
    pub cookie_name: Option<String>,
    pub deployment_id_from: DeploymentIdSource,
    pub container: Option<String>,
    pub skew_window: Duration,
    pub poll_interval: Duration,
    pub priority_range: Option<PriorityRange>,
    pub on_error: OnError,
    pub after_window: AfterWindow,
    /// The post-shift hook's `timeoutConfiguration.timeoutInMinutes`, when the user tells it:
    /// the hold (`skewWindow` plus a margin of poll intervals) must fit inside it.
    pub hook_timeout: Option<Duration>,
    /// How the previous version stays reachable after the production shift.
    pub retention: Retention,
    /// `service` mode: how many tasks the retention service runs (never more than blue ran).
    pub retained_tasks: u32,
    /// `service` mode: how many retained versions a service keeps; the oldest retire first.
    pub max_versions: u32,
    /// `service` mode: a retained version retires this long after it left production.
    pub max_age: Duration,
    /// `service` mode: no idle retirement before a retained version is this old.
    pub min_age: Duration,
    /// `service` mode: a retained version with no requests over this long is idle.
    pub idle_window: Duration,
    /// `service` mode: how long post-shift waits for the retention copy to become healthy
    /// before it falls back to holding.
    pub retention_start_timeout: Duration,
}

/// How post-shift keeps the previous version reachable for the pins that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Answer `IN_PROGRESS` for the skew window: ECS keeps blue running, and the deployment
    /// stays open until the window ends. One previous version at a time.
    Hold,
    /// Clone blue into a retention service with its own target group, move the pins there and
    /// let the deployment finish; the copy retires later (`maxVersions`, `maxAge`, idle).
    Service,
}

impl Retention {
    /// The setting's spelling: `hold` or `service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Retention::Hold => "hold",
            Retention::Service => "service",
        }
    }
}

/// What a request carrying a pin whose version is gone gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWindow {
    /// Production, as if it carried no pin.
    Fallthrough,
    /// A 409 JSON answer naming the current production deployment, from one catch-all rule.
    Retired,
}

/// Where a task definition carries its deployment ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentIdSource {
    Env(String),
    Label(String),
    ImageTag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityRange {
    pub low: u32,
    pub high: u32,
}

impl PriorityRange {
    pub fn contains(&self, priority: u32) -> bool {
        (self.low..=self.high).contains(&priority)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Answer FAILED: ECS rolls the deployment back.
    Rollback,
    /// Answer SUCCEEDED, log the error and record it in the ledger.
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting `{key}` = {value:?} (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Origin,
        reason: String,
    },
    #[error("unknown setting `{key}` in hookDetails; known settings are {known}")]
    Unknown { key: String, known: String },
    #[error("hookDetails must be a JSON object, got {0}")]
    NotAnObject(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    HookDetails,
    Env(&'static str),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::HookDetails => f.write_str("hookDetails"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Default => f.write_str("the built-in default"),
        }
    }
}

/// Function-level defaults, read from the environment once at cold start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvDefaults {
    values: BTreeMap<&'static str, String>,
}

impl EnvDefaults {
    pub fn from_env() -> Self {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let values = SETTING_KEYS
            .iter()
            .filter_map(|(key, var)| lookup(var).map(|value| (*key, value)))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        Self { values }
    }
}

impl Settings {
    /// Resolves and validates the settings of one invocation.
    pub fn resolve(
        hook_details: &Map<String, Value>,
        defaults: &EnvDefaults,
    ) -> Result<Self, SettingsError> {
        if let Some(key) = hook_details.keys().find(|key| {
            *key != ROLLBACK_RETRIES_KEY && !SETTING_KEYS.iter().any(|(known, _)| known == key)
        }) {
            return Err(SettingsError::Unknown {
                key: key.chars().take(64).collect(),
                known: SETTING_KEYS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let source = Source {
            hook_details,
            defaults,
        };
        let settings = Self {
            on_error: source
                .parse("onError", parse_on_error)?
                .unwrap_or(OnError::Rollback),
            header_name: source
                .parse("headerName", parse_header_name)?
                .unwrap_or_else(|| "X-Deployment-ID".to_owned()),
            query_param: source.parse("queryParam", parse_query_param)?,
            cookie_name: source.parse("cookieName", parse_cookie_name)?,
            deployment_id_from: source
                .parse("deploymentIdFrom", parse_deployment_id_source)?
                .unwrap_or_else(|| DeploymentIdSource::Env("DEPLOYMENT_ID".to_owned())),
            container: source.parse("container", parse_container)?,
            skew_window: source
                .parse("skewWindow", parse_skew_window)?
                .unwrap_or(Duration::from_secs(3600)),
            poll_interval: source
                .parse("pollInterval", parse_poll_interval)?
                .unwrap_or(Duration::from_secs(60)),
            priority_range: source.parse("priorityRange", parse_priority_range)?,
            after_window: source
                .parse("afterWindow", parse_after_window)?
                .unwrap_or(AfterWindow::Fallthrough),
            hook_timeout: source.parse("hookTimeout", parse_hook_timeout)?,
            retention: source
                .parse("retention", parse_retention)?
                .unwrap_or(DEFAULT_RETENTION),
            retained_tasks: source
                .parse("retainedTasks", |raw| {
                    parse_count(
                        raw,
                        MAX_RETAINED_TASKS,
                        "ECS's default quota of tasks per service",
                    )
                })?
                .unwrap_or(1),
            max_versions: source
                .parse("maxVersions", |raw| {
                    parse_count(
                        raw,
                        MAX_RETAINED_VERSIONS,
                        "ALB's default quota of target groups per load balancer",
                    )
                })?
                .unwrap_or(3),
            max_age: source
                .parse("maxAge", parse_max_age)?
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            min_age: source
                .parse("minAge", parse_min_age)?
                .unwrap_or(Duration::from_secs(30 * 60)),
            idle_window: source
                .parse("idleWindow", parse_idle_window)?
                .unwrap_or(Duration::from_secs(30 * 60)),
            retention_start_timeout: source
                .parse("retentionStartTimeout", parse_start_timeout)?
                .unwrap_or(Duration::from_secs(10 * 60)),
        };
        settings.check_ages(&source)?;
        settings.check_hold_fits(&source)?;
        Ok(settings)
    }

    /// `minAge` is a grace before idle retirement; one longer than `maxAge` could never apply.
    fn check_ages(&self, source: &Source<'_>) -> Result<(), SettingsError> {
        if self.min_age <= self.max_age {
            return Ok(());
        }
        let (value, origin) = source.raw("minAge").unwrap_or_else(|| {
            (
                humantime::format_duration(self.min_age).to_string(),
                Origin::Default,
            )
        });
        Err(SettingsError::Invalid {
            key: "minAge",
            value,
            origin,
            reason: format!(
                "is longer than maxAge {}: a retained version retires at maxAge, so shorten minAge or raise maxAge",
                humantime::format_duration(self.max_age)
            ),
        })
    }

    /// The hold needs `skewWindow` plus [`HOOK_TIMEOUT_MARGIN_POLLS`] poll intervals; a hook
    /// timeout shorter than that would roll every deployment back at the end of its window.
    /// In `service` mode the hook may wait `retentionStartTimeout` for the copy and then fall
    /// back to holding until the window (counted from the shift) ends: the longer of the two.
    fn check_hold_fits(&self, source: &Source<'_>) -> Result<(), SettingsError> {
        let Some(timeout) = self.hook_timeout else {
            return Ok(());
        };
        let margin = self.poll_interval * HOOK_TIMEOUT_MARGIN_POLLS;
        if self.retention == Retention::Service
            && self.retention_start_timeout > self.skew_window
            && self.retention_start_timeout + margin > timeout
        {
            let (value, origin) = source.raw("retentionStartTimeout").unwrap_or_else(|| {
                (
                    humantime::format_duration(self.retention_start_timeout).to_string(),
                    Origin::Default,
                )
            });
            return Err(SettingsError::Invalid {
                key: "retentionStartTimeout",
                value,
                origin,
                reason: format!(
                    "waiting for the retention copy needs retentionStartTimeout plus {HOOK_TIMEOUT_MARGIN_POLLS} poll intervals ({}), \
                     longer than hookTimeout {}: shorten retentionStartTimeout or raise the post-shift hook's timeout",
                    humantime::format_duration(self.retention_start_timeout + margin),
                    humantime::format_duration(timeout),
                ),
            });
        }
        let needed = self.skew_window + margin;
        if needed <= timeout {
            return Ok(());
        }
        let minutes = needed.as_secs().div_ceil(60);
        let longest = timeout.saturating_sub(margin);
        let (value, origin) = source.raw("skewWindow").unwrap_or_else(|| {
            (
                humantime::format_duration(self.skew_window).to_string(),
                Origin::Default,
            )
        });
        Err(SettingsError::Invalid {
            key: "skewWindow",
            value,
            origin,
            reason: format!(
                "the hold needs skewWindow plus {HOOK_TIMEOUT_MARGIN_POLLS} poll intervals ({}), longer than hookTimeout {}: \
                 raise the post-shift hook's timeoutConfiguration.timeoutInMinutes (and hookTimeout) above {} minutes, \
                 i.e. to at least {minutes}, or shorten skewWindow to at most {}",
                humantime::format_duration(needed),
                humantime::format_duration(timeout),
                minutes - 1,
                humantime::format_duration(longest),
            ),
        })
    }

    /// Only `onError`, for answering an invocation whose other settings are invalid the way the
    /// user asked. Falls back to the safe default (rollback) when it is itself unreadable.
    pub fn on_error_only(hook_details: &Map<String, Value>, defaults: &EnvDefaults) -> OnError {
        let source = Source {
            hook_details,
            defaults,
        };
        source
            .parse("onError", parse_on_error)
            .ok()
            .flatten()
            .unwrap_or(OnError::Rollback)
    }
}

struct Source<'a> {
    hook_details: &'a Map<String, Value>,
    defaults: &'a EnvDefaults,
}

impl Source<'_> {
    /// The raw value of `key` and where it came from, if set.
    fn raw(&self, key: &'static str) -> Option<(String, Origin)> {
        match self.hook_details.get(key) {
            Some(Value::String(s)) => Some((s.clone(), Origin::HookDetails)),
            _ => self
                .defaults
                .values
                .get(key)
                .map(|v| (v.clone(), Origin::Env(env_var_of(key)))),
        }
    }

    fn parse<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, SettingsError> {
        let (raw, origin) = match self.hook_details.get(key) {
            Some(Value::String(s)) => (s.clone(), Origin::HookDetails),
            Some(Value::Null) | None => match self.defaults.values.get(key) {
                Some(value) => (value.clone(), Origin::Env(env_var_of(key))),
                None => return Ok(None),
            },
            Some(other) => {
                return Err(SettingsError::Invalid {
                    key,
                    value: other.to_string(),
                    origin: Origin::HookDetails,
                    reason: "must be a string".to_owned(),
                });
            }
        };
        parse(raw.trim())
            .map(Some)
            .map_err(|reason| SettingsError::Invalid {
                key,
                value: raw.chars().take(80).collect(),
                origin,
                reason,
            })
    }
}

fn env_var_of(key: &str) -> &'static str {
    SETTING_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, var)| *var)
        .unwrap_or("?")
}

fn parse_retention(raw: &str) -> Result<Retention, String> {
    match raw {
        "hold" => Ok(Retention::Hold),
        "service" => Ok(Retention::Service),
        _ => Err("must be `hold` or `service`".to_owned()),
    }
}

/// A whole number from 1 to `max`, `why` naming where the bound comes from.
fn parse_count(raw: &str, max: u32, why: &str) -> Result<u32, String> {
    raw.parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("must be a whole number from 1 to {max} ({why})"))
}

fn parse_max_age(raw: &str) -> Result<Duration, String> {
    let age = parse_duration(raw)?;
    if age < Duration::from_secs(60) || age > MAX_RETENTION_AGE {
        return Err(format!(
            "must be between 1m and {}",
            humantime::format_duration(MAX_RETENTION_AGE)
        ));
    }
    Ok(age)
}

fn parse_min_age(raw: &str) -> Result<Duration, String> {
    let age = parse_duration(raw)?;
    if age > MAX_RETENTION_AGE {
        return Err(format!(
            "must be at most {}",
            humantime::format_duration(MAX_RETENTION_AGE)
        ));
    }
    Ok(age)
}

/// The ALB publishes `RequestCount` per minute; a window shorter than that has no data point,
/// and one beyond a day says more about traffic patterns than about a tab left open.
fn parse_idle_window(raw: &str) -> Result<Duration, String> {
    let window = parse_duration(raw)?;
    if window < Duration::from_secs(60) || window > Duration::from_secs(24 * 3600) {
        return Err(
            "must be between 1m and 24h (CloudWatch's RequestCount is per minute)".to_owned(),
        );
    }
    Ok(window)
}

fn parse_start_timeout(raw: &str) -> Result<Duration, String> {
    let timeout = parse_duration(raw)?;
    if timeout < Duration::from_secs(60) || timeout > MAX_SKEW_WINDOW {
        return Err(format!(
            "must be between 1m and {} (tasks and health checks need a minute; ECS ends a stage at 24 hours)",
            humantime::format_duration(MAX_SKEW_WINDOW)
        ));
    }
    Ok(timeout)
}

fn parse_after_window(raw: &str) -> Result<AfterWindow, String> {
    match raw {
        "fallthrough" => Ok(AfterWindow::Fallthrough),
        "retired" => Ok(AfterWindow::Retired),
        _ => Err("must be `fallthrough` or `retired`".to_owned()),
    }
}

fn parse_on_error(raw: &str) -> Result<OnError, String> {
    match raw {
        "rollback" => Ok(OnError::Rollback),
        "continue" => Ok(OnError::Continue),
        _ => Err("must be `rollback` or `continue`".to_owned()),
    }
}

/// RFC 7230 token characters; ALB limits header names to 40 characters and forbids wildcards.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'+-.^_`|~".contains(c)
}

fn parse_header_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 40 {
        return Err("must be 1 to 40 characters (ALB limit)".to_owned());
    }
    if !raw.chars().all(is_token_char) {
        return Err("must be an HTTP header name (letters, digits and -_.!#$%&'+^`|~)".to_owned());
    }
    if ["cookie", "host"].contains(&raw.to_ascii_lowercase().as_str()) {
        return Err("cannot be Cookie or Host; use cookieName for cookie pins".to_owned());
    }
    Ok(raw.to_owned())
}

fn parse_query_param(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    {
        return Err("may only contain letters, digits and -_.~".to_owned());
    }
    Ok(raw.to_owned())
}

fn parse_cookie_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if !raw.chars().all(is_token_char) {
        return Err("must be a cookie name (letters, digits and -_.!#$%&'+^`|~)".to_owned());
    }
    Ok(raw.to_owned())
}

fn parse_deployment_id_source(raw: &str) -> Result<DeploymentIdSource, String> {
    let named = |name: &str| -> Result<String, String> {
        if name.is_empty() {
            Err("needs a name after the colon".to_owned())
        } else {
            Ok(name.to_owned())
        }
    };
    if raw == "image-tag" {
        Ok(DeploymentIdSource::ImageTag)
    } else if let Some(name) = raw.strip_prefix("env:") {
        named(name).map(DeploymentIdSource::Env)
    } else if let Some(name) = raw.strip_prefix("label:") {
        named(name).map(DeploymentIdSource::Label)
    } else {
        Err("must be `env:NAME`, `label:NAME` or `image-tag`".to_owned())
    }
}

fn parse_container(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 255 {
        return Err("must be a container name of 1 to 255 characters".to_owned());
    }
    Ok(raw.to_owned())
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("not a duration like `90s`, `15m` or `1h` ({e})"))
}

fn parse_skew_window(raw: &str) -> Result<Duration, String> {
    let window = parse_duration(raw)?;
    if window > MAX_SKEW_WINDOW {
        return Err(format!(
            "is longer than {}: ECS rolls back a stage that lasts 24 hours, so the hold must end before; shorten skewWindow",
            humantime::format_duration(MAX_SKEW_WINDOW)
        ));
    }
    Ok(window)
}

fn parse_hook_timeout(raw: &str) -> Result<Duration, String> {
    let timeout = parse_duration(raw)?;
    if timeout < Duration::from_secs(60) || timeout > MAX_HOOK_TIMEOUT {
        return Err(
            "must be between 1m and 24h (ECS's range for timeoutConfiguration.timeoutInMinutes)"
                .to_owned(),
        );
    }
    Ok(timeout)
}

fn parse_poll_interval(raw: &str) -> Result<Duration, String> {
    let interval = parse_duration(raw)?;
    if interval < Duration::from_secs(1) || interval > MAX_POLL_INTERVAL {
        return Err("must be between 1s and 1h".to_owned());
    }
    Ok(interval)
}

fn parse_priority_range(raw: &str) -> Result<PriorityRange, String> {
    let (low, high) = raw
        .split_once('-')
        .ok_or_else(|| "must look like `100-899`".to_owned())?;
    let bound = |s: &str| -> Result<u32, String> {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=MAX_PRIORITY).contains(p))
            .ok_or_else(|| format!("bounds must be whole numbers from 1 to {MAX_PRIORITY}"))
    };
    let (low, high) = (bound(low)?, bound(high)?);
    if low > high {
        return Err("lower bound is above the upper bound".to_owned());
    }
    Ok(PriorityRange { low, high })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn details(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn built_in_defaults_apply_when_nothing_is_set() {
        let s = Settings::resolve(&Map::new(), &EnvDefaults::default()).unwrap();
        assert_eq!(s.header_name, "X-Deployment-ID");
        assert_eq!(s.query_param, None);
        assert_eq!(s.cookie_name, None);
        assert_eq!(
            s.deployment_id_from,
            DeploymentIdSource::Env("DEPLOYMENT_ID".into())
        );
        assert_eq!(s.skew_window, Duration::from_secs(3600));
        assert_eq!(s.poll_interval, Duration::from_secs(60));
        assert_eq!(s.priority_range, None);
        assert_eq!(s.on_error, OnError::Rollback);
        assert_eq!(s.after_window, AfterWindow::Fallthrough);
    }

    #[test]
    fn hook_details_override_env_defaults_which_override_built_ins() {
        let env = EnvDefaults::from_lookup(|var| match var {
            "SKEWGUARD_SKEW_WINDOW" => Some("2h".into()),
            "SKEWGUARD_HEADER_NAME" => Some("X-Env-Pin".into()),
            _ => None,
        });
        let s = Settings::resolve(
            &details(json!({"skewWindow": "3s", "queryParam": "dpl"})),
            &env,
        )
        .unwrap();
        assert_eq!(s.skew_window, Duration::from_secs(3));
        assert_eq!(s.header_name, "X-Env-Pin");
        assert_eq!(s.query_param.as_deref(), Some("dpl"));
    }

    #[test]
    fn every_setting_parses() {
        let s = Settings::resolve(
            &details(json!({
                "headerName": "X-Build", "queryParam": "dpl", "cookieName": "__dpl",
                "deploymentIdFrom": "label:com.example.sha", "container": "web",
                "skewWindow": "90m", "pollInterval": "15s", "priorityRange": "100-899",
                "onError": "continue", "afterWindow": "retired"
            })),
            &EnvDefaults::default(),
        )
        .unwrap();
        assert_eq!(s.cookie_name.as_deref(), Some("__dpl"));
        assert_eq!(
            s.deployment_id_from,
            DeploymentIdSource::Label("com.example.sha".into())
        );
        assert_eq!(s.container.as_deref(), Some("web"));
        assert_eq!(s.skew_window, Duration::from_secs(5400));
        assert_eq!(s.poll_interval, Duration::from_secs(15));
        assert_eq!(
            s.priority_range,
            Some(PriorityRange {
                low: 100,
                high: 899
            })
        );
        assert_eq!(s.on_error, OnError::Continue);
        assert_eq!(s.after_window, AfterWindow::Retired);
        let tag = Settings::resolve(
            &details(json!({"deploymentIdFrom": "image-tag"})),
            &EnvDefaults::default(),
        );
        assert_eq!(
            tag.unwrap().deployment_id_from,
            DeploymentIdSource::ImageTag
        );
    }

    fn error_of(v: Value) -> String {
        Settings::resolve(&details(v), &EnvDefaults::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn invalid_settings_name_the_key() {
        for (input, key) in [
            (json!({"skewWindow": "forever"}), "skewWindow"),
            (json!({"skewWindow": "2d"}), "skewWindow"),
            (json!({"pollInterval": "0s"}), "pollInterval"),
            (json!({"priorityRange": "900-100"}), "priorityRange"),
            (json!({"priorityRange": "0-10"}), "priorityRange"),
            (json!({"priorityRange": "10-50001"}), "priorityRange"),
            (json!({"headerName": "X Bad"}), "headerName"),
            (json!({"headerName": "x".repeat(41)}), "headerName"),
            (json!({"headerName": "Cookie"}), "headerName"),
            (json!({"cookieName": "a;b"}), "cookieName"),
            (json!({"queryParam": "d*"}), "queryParam"),
            (json!({"deploymentIdFrom": "file:/x"}), "deploymentIdFrom"),
            (json!({"deploymentIdFrom": "env:"}), "deploymentIdFrom"),
            (json!({"onError": "ignore"}), "onError"),
            (json!({"skewWindow": 60}), "skewWindow"),
            (json!({"afterWindow": "410"}), "afterWindow"),
        ] {
            let msg = error_of(input.clone());
            assert!(msg.contains(&format!("`{key}`")), "{input} gave {msg}");
        }
    }

    #[test]
    fn skew_window_beyond_a_stage_limit_says_what_to_change() {
        let msg = error_of(json!({"skewWindow": "24h"}));
        assert!(msg.contains("shorten skewWindow"), "{msg}");
    }

    #[test]
    fn hook_timeout_is_optional_and_parses() {
        let s = Settings::resolve(&Map::new(), &EnvDefaults::default()).unwrap();
        assert_eq!(s.hook_timeout, None, "unset by default: nothing to check");
        let s = Settings::resolve(
            &details(json!({"hookTimeout": "120m", "skewWindow": "1h"})),
            &EnvDefaults::default(),
        )
        .unwrap();
        assert_eq!(s.hook_timeout, Some(Duration::from_secs(7200)));
        let env = EnvDefaults::from_lookup(|var| {
            (var == "SKEWGUARD_HOOK_TIMEOUT").then(|| "2h".to_owned())
        });
        let s = Settings::resolve(&Map::new(), &env).unwrap();
        assert_eq!(s.hook_timeout, Some(Duration::from_secs(7200)));
        for bad in ["soon", "30s", "25h"] {
            let msg = error_of(json!({ "hookTimeout": bad }));
            assert!(msg.contains("`hookTimeout`"), "{bad}: {msg}");
        }
    }

    #[test]
    fn a_skew_window_the_hook_timeout_cannot_hold_says_what_to_change() {
        // 1h window + 2 × 60s polls = 62 min > 60 min.
        let msg = error_of(json!({"skewWindow": "1h", "hookTimeout": "60m"}));
        assert!(msg.contains("`skewWindow`"), "{msg}");
        assert!(
            msg.contains(
                "raise the post-shift hook's timeoutConfiguration.timeoutInMinutes (and hookTimeout) above 61 minutes"
            ),
            "{msg}"
        );
        assert!(msg.contains("to at least 62"), "{msg}");
        assert!(
            msg.contains("or shorten skewWindow to at most 58m"),
            "{msg}"
        );
        // Exactly enough room passes; the margin follows pollInterval.
        assert!(
            Settings::resolve(
                &details(json!({"skewWindow": "1h", "hookTimeout": "62m"})),
                &EnvDefaults::default()
            )
            .is_ok()
        );
        let msg =
            error_of(json!({"skewWindow": "1h", "pollInterval": "10m", "hookTimeout": "75m"}));
        assert!(msg.contains("above 79 minutes"), "{msg}");
        // The built-in 1h window is checked too, and named as such.
        let msg = error_of(json!({"hookTimeout": "30m"}));
        assert!(msg.contains("from the built-in default"), "{msg}");
        // An env default window is named by its variable.
        let env = EnvDefaults::from_lookup(|var| match var {
            "SKEWGUARD_SKEW_WINDOW" => Some("2h".into()),
            "SKEWGUARD_HOOK_TIMEOUT" => Some("2h".into()),
            _ => None,
        });
        let msg = Settings::resolve(&Map::new(), &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("env SKEWGUARD_SKEW_WINDOW"), "{msg}");
    }

    #[test]
    fn retention_settings_have_their_defaults() {
        let s = Settings::resolve(&Map::new(), &EnvDefaults::default()).unwrap();
        assert_eq!(s.retention, DEFAULT_RETENTION);
        assert_eq!(s.retained_tasks, 1);
        assert_eq!(s.max_versions, 3);
        assert_eq!(s.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(s.min_age, Duration::from_secs(30 * 60));
        assert_eq!(s.idle_window, Duration::from_secs(30 * 60));
        assert_eq!(s.retention_start_timeout, Duration::from_secs(10 * 60));
    }

    #[test]
    fn retention_settings_parse_from_hook_details_and_env() {
        let s = Settings::resolve(
            &details(json!({
                "retention": "hold", "retainedTasks": "2", "maxVersions": "5",
                "maxAge": "30d", "minAge": "0s", "idleWindow": "1h",
                "retentionStartTimeout": "3m"
            })),
            &EnvDefaults::default(),
        )
        .unwrap();
        assert_eq!(s.retention, Retention::Hold);
        assert_eq!(s.retained_tasks, 2);
        assert_eq!(s.max_versions, 5);
        assert_eq!(s.max_age, MAX_RETENTION_AGE);
        assert_eq!(s.min_age, Duration::ZERO);
        assert_eq!(s.idle_window, Duration::from_secs(3600));
        assert_eq!(s.retention_start_timeout, Duration::from_secs(180));
        let env = EnvDefaults::from_lookup(|var| match var {
            "SKEWGUARD_RETENTION" => Some("hold".into()),
            "SKEWGUARD_MAX_VERSIONS" => Some("7".into()),
            _ => None,
        });
        let s = Settings::resolve(&Map::new(), &env).unwrap();
        assert_eq!(s.retention, Retention::Hold);
        assert_eq!(s.max_versions, 7);
    }

    #[test]
    fn invalid_retention_settings_name_the_key() {
        for (input, key, says) in [
            (
                json!({"retention": "keep"}),
                "retention",
                "`hold` or `service`",
            ),
            (
                json!({"retainedTasks": "0"}),
                "retainedTasks",
                "from 1 to 5000",
            ),
            (
                json!({"retainedTasks": "1.5"}),
                "retainedTasks",
                "whole number",
            ),
            (
                json!({"retainedTasks": "5001"}),
                "retainedTasks",
                "tasks per service",
            ),
            (json!({"maxVersions": "0"}), "maxVersions", "from 1 to 100"),
            (json!({"maxVersions": "-1"}), "maxVersions", "whole number"),
            (json!({"maxAge": "31d"}), "maxAge", "between 1m and 30days"),
            (json!({"maxAge": "10s"}), "maxAge", "between 1m"),
            (json!({"minAge": "a while"}), "minAge", "not a duration"),
            (json!({"minAge": "31d"}), "minAge", "at most 30days"),
            (
                json!({"minAge": "2d", "maxAge": "1d"}),
                "minAge",
                "longer than maxAge 1day",
            ),
            (
                json!({"idleWindow": "30s"}),
                "idleWindow",
                "between 1m and 24h",
            ),
            (
                json!({"idleWindow": "2d"}),
                "idleWindow",
                "between 1m and 24h",
            ),
            (
                json!({"retentionStartTimeout": "10s"}),
                "retentionStartTimeout",
                "between 1m",
            ),
            (
                json!({"retentionStartTimeout": "24h"}),
                "retentionStartTimeout",
                "between 1m",
            ),
            (
                json!({"retainedTasks": 2}),
                "retainedTasks",
                "must be a string",
            ),
        ] {
            let msg = error_of(input.clone());
            assert!(msg.contains(&format!("`{key}`")), "{input} gave {msg}");
            assert!(msg.contains(says), "{input} gave {msg}");
        }
    }

    #[test]
    fn a_start_timeout_the_hook_timeout_cannot_wait_out_says_what_to_change() {
        // service mode waits up to 30m for the copy; 30m + 2 × 60s > 30m.
        let msg = error_of(json!({
            "retention": "service", "skewWindow": "5m",
            "retentionStartTimeout": "30m", "hookTimeout": "30m"
        }));
        assert!(msg.contains("`retentionStartTimeout`"), "{msg}");
        assert!(msg.contains("shorten retentionStartTimeout"), "{msg}");
        // The same in hold mode never waits for a copy.
        assert!(
            Settings::resolve(
                &details(json!({
                    "retention": "hold", "skewWindow": "5m",
                    "retentionStartTimeout": "30m", "hookTimeout": "30m"
                })),
                &EnvDefaults::default()
            )
            .is_ok()
        );
        // A start timeout within the skew window needs no more than the hold itself.
        assert!(
            Settings::resolve(
                &details(json!({
                    "retention": "service", "skewWindow": "1h",
                    "retentionStartTimeout": "10m", "hookTimeout": "62m"
                })),
                &EnvDefaults::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn service_mode_is_accepted_from_hook_details_or_the_environment() {
        let s = Settings::resolve(
            &details(json!({"retention": "service"})),
            &EnvDefaults::default(),
        )
        .unwrap();
        assert_eq!(s.retention, Retention::Service);
        let env =
            EnvDefaults::from_lookup(|var| (var == "SKEWGUARD_RETENTION").then(|| "hold".into()));
        assert_eq!(
            Settings::resolve(&Map::new(), &env).unwrap().retention,
            Retention::Hold
        );
    }

    #[test]
    fn unknown_keys_are_rejected_so_typos_do_not_go_unnoticed() {
        let msg = error_of(json!({"skewwindow": "1h"}));
        assert!(msg.contains("unknown setting `skewwindow`"), "{msg}");
        assert!(msg.contains("skewWindow"), "{msg}");
    }

    #[test]
    fn invalid_env_default_names_the_variable() {
        let env = EnvDefaults::from_lookup(|var| {
            (var == "SKEWGUARD_ON_ERROR").then(|| "maybe".to_owned())
        });
        let msg = Settings::resolve(&Map::new(), &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SKEWGUARD_ON_ERROR"), "{msg}");
    }

    #[test]
    fn on_error_is_honoured_even_when_another_setting_is_invalid() {
        let d = details(json!({"onError": "continue", "skewWindow": "nope"}));
        assert_eq!(
            Settings::on_error_only(&d, &EnvDefaults::default()),
            OnError::Continue
        );
        let d = details(json!({"onError": "bogus"}));
        assert_eq!(
            Settings::on_error_only(&d, &EnvDefaults::default()),
            OnError::Rollback
        );
    }
}
