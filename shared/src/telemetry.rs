//! Structured JSON logs for CloudWatch: one compact object per line, no timestamps or targets
//! (Lambda adds its own), level from `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG` (default INFO).
//!
//! Every line written during an invocation carries that invocation's `requestId` (and
//! `xrayTraceId` when Lambda passed one), so one invocation's lines can be found together:
//! `lambda_runtime` runs each invocation inside a span holding those fields, and the fields of
//! every span around a log event are flattened into its line next to the event's own fields:
//!
//! ```text
//! {"level":"INFO","message":"pin created","rule_arn":"arn:…","requestId":"8f5…","xrayTraceId":"Root=1-…"}
//! ```
//!
//! The span that carries the request ID is kept at any log level, so a function logging only
//! warnings still tags them.

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The field of the runtime's per-invocation span that holds the Lambda request ID.
pub const REQUEST_ID_FIELD: &str = "requestId";

/// Installs the JSON subscriber on standard output. A second call (tests) keeps the first
/// subscriber.
pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::registry()
        .with(layer(&level, std::io::stdout))
        .try_init();
}

/// The logging layer: `level` is an `EnvFilter` directive (`warn`, `skewguard_core=debug`…);
/// an invalid one means INFO.
fn layer<S, W>(level: &str, writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_new(level.to_ascii_lowercase()).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .with_writer(writer)
        .with_filter(filter.or(filter_fn(carries_request_id)))
}

/// A span that tags lines with a request ID, enabled whatever the level.
fn carries_request_id(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.fields().field(REQUEST_ID_FIELD).is_some()
}

/// One JSON object per event: `level`, the event's fields (`message` among them), then the
/// fields of the spans around it, outermost first. A name already on the line keeps its
/// first value.
struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Line(vec![(
            "level".to_owned(),
            Value::from(event.metadata().level().as_str()),
        )]);
        event.record(&mut line);
        for span in ctx.event_scope().into_iter().flat_map(|s| s.from_root()) {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                continue;
            };
            // The span's fields, as `JsonFields` recorded them: a JSON object (empty if none).
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                for (name, value) in fields {
                    line.push(name, value);
                }
            }
        }
        writeln!(writer, "{line}")
    }
}

/// The fields of one log line, in order, each name once.
struct Line(Vec<(String, Value)>);

impl Line {
    fn push(&mut self, name: String, value: Value) {
        if !self.0.iter().any(|(n, _)| *n == name) {
            self.0.push((name, value));
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{value}", Value::from(name.as_str()))?;
        }
        f.write_str("}")
    }
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field.name().to_owned(), Value::from(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name().to_owned(), Value::from(value));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::layer;

    /// Everything the layer writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// Runs `log` under the layer at `level` and returns the lines it wrote, parsed.
    fn lines_of(level: &str, log: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(layer(level, captured.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// What `lambda_runtime` wraps each invocation in.
    fn invocation(request_id: &str, trace_id: &str) -> tracing::Span {
        tracing::info_span!(
            "Lambda runtime invoke",
            requestId = request_id,
            xrayTraceId = trace_id
        )
    }

    #[test]
    fn a_line_carries_the_request_id_and_trace_id_of_its_invocation() {
        let lines = lines_of("info", || {
            let _invocation = invocation("req-1", "Root=1-abc").entered();
            tracing::info!(rule_arn = "arn:rule/1", priority = 7, "pin created");
        });
        assert_eq!(
            lines,
            [json!({
                "level": "INFO",
                "message": "pin created",
                "rule_arn": "arn:rule/1",
                "priority": 7,
                "requestId": "req-1",
                "xrayTraceId": "Root=1-abc",
            })]
        );
    }

    #[test]
    fn each_invocation_tags_its_own_lines_and_nothing_outside_one() {
        let lines = lines_of("info", || {
            tracing::info!("cold start");
            for id in ["req-1", "req-2"] {
                let invocation = invocation(id, "Root=1-abc");
                invocation.in_scope(|| {
                    let _stage = tracing::info_span!("stage", service = "web").entered();
                    tracing::warn!(error = %"throttled", "retrying");
                });
            }
        });
        let tags: Vec<_> = lines
            .iter()
            .map(|l| (l["requestId"].clone(), l["service"].clone()))
            .collect();
        assert_eq!(
            tags,
            [
                (json!(null), json!(null)),
                (json!("req-1"), json!("web")),
                (json!("req-2"), json!("web")),
            ]
        );
        assert_eq!(lines[1]["error"], "throttled");
    }

    #[test]
    fn warnings_keep_the_request_id_when_info_is_filtered_out() {
        let lines = lines_of("WARN", || {
            let _invocation = invocation("req-9", "Root=1-abc").entered();
            tracing::info!("filtered out");
            tracing::error!(error_kind = "MalformedEvent", "rejected hook event");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["requestId"], "req-9");
        assert_eq!(lines[0]["level"], "ERROR");
    }

    #[test]
    fn an_event_field_is_not_overwritten_by_a_span_field() {
        let lines = lines_of("info", || {
            let _invocation = invocation("req-1", "Root=1-abc").entered();
            tracing::info!(requestId = "own", "odd but allowed");
        });
        assert_eq!(lines[0]["requestId"], "own");
        assert_eq!(lines[0].as_object().unwrap().len(), 4, "{:?}", lines[0]);
    }
}
