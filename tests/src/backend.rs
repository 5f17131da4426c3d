//! The example backend (`examples/checkout`) as a process, and the cart schemas its clients
//! expect.
//!
//! [`Backend::start`] runs the workspace's `checkout` binary on a free loopback port; it must
//! have been built (`cargo build -p checkout`), since a test of another package cannot ask cargo
//! for it. [`validate_cart`] is what a frontend of a given schema version accepts: the
//! end-to-end tests use it to tell a browser that got the API it was built against from one that
//! hit version skew.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::lambda::{LogRing, die_with_parent, kill_and_reap, workspace_binary};

/// Environment variable naming a `checkout` binary to run instead of the workspace's.
pub const CHECKOUT_BIN_ENV: &str = "SKEWGUARD_CHECKOUT_BIN";
/// How long [`Backend::start`] waits for the `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `checkout` process, killed and reaped on drop.
#[derive(Debug)]
pub struct Backend {
    child: Child,
    addr: SocketAddr,
    deployment_id: String,
    schema: String,
    logs: LogRing,
}

impl Backend {
    /// The `checkout` binary: `$SKEWGUARD_CHECKOUT_BIN`, else `<target>/debug/checkout`,
    /// which must be newer than the sources in `examples/checkout`.
    pub fn binary() -> std::io::Result<PathBuf> {
        if let Some(path) = std::env::var_os(CHECKOUT_BIN_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let binary = workspace_binary("checkout", "checkout")?;
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/checkout");
        if let (Ok(built), Some(edited)) = (modified(&binary), newest_source(&sources))
            && edited > built
        {
            return Err(std::io::Error::other(format!(
                "{} is older than the sources in {}: build it with `cargo build -p checkout`",
                binary.display(),
                sources.display()
            )));
        }
        Ok(binary)
    }

    /// Starts a backend serving deployment `deployment_id` with cart schema `schema`
    /// (`v1`, `v2` or `v3`) and waits until it listens.
    pub async fn start(deployment_id: &str, schema: &str) -> std::io::Result<Backend> {
        let binary = Self::binary()?;
        let mut command = Command::new(&binary);
        command
            .env("DEPLOYMENT_ID", deployment_id)
            .env("CART_SCHEMA", schema)
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("starting {}: {e}", binary.display()))
        })?;
        let logs = LogRing::new(200, false);
        if let Some(err) = child.stderr.take() {
            logs.drain(err);
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        // The first line names the port; read it off the runtime's threads.
        let first_line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            (read.map(|_| line), reader)
        });
        let mut backend_child = Some(child);
        let fail = |child: &mut Option<Child>, logs: &LogRing, why: String| {
            if let Some(child) = child.as_mut() {
                kill_and_reap(child);
            }
            std::io::Error::other(format!(
                "checkout ({deployment_id}, {schema}) did not start: {why}\n{}",
                logs.lines().join("\n")
            ))
        };
        let (line, reader) = match tokio::time::timeout(START_TIMEOUT, first_line).await {
            Ok(Ok((Ok(line), reader))) => (line, reader),
            Ok(Ok((Err(e), _))) => return Err(fail(&mut backend_child, &logs, e.to_string())),
            Ok(Err(e)) => return Err(fail(&mut backend_child, &logs, e.to_string())),
            Err(_) => {
                return Err(fail(
                    &mut backend_child,
                    &logs,
                    format!("no `listening on` line within {START_TIMEOUT:?}"),
                ));
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(addr) = addr else {
            // Give stderr's drain thread a moment to catch the reason.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(fail(
                &mut backend_child,
                &logs,
                format!("its first line was {line:?}, not `listening on 127.0.0.1:PORT`"),
            ));
        };
        logs.push(line.trim_end().to_owned());
        logs.drain(reader);
        Ok(Backend {
            child: backend_child.take().expect("the child is still owned"),
            addr,
            deployment_id: deployment_id.to_owned(),
            schema: schema.to_owned(),
            logs,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What to register in a target group: `Id = "127.0.0.1"`, this port.
    pub fn target_ip(&self) -> String {
        Ipv4Addr::LOCALHOST.to_string()
    }

    pub fn deployment_id(&self) -> &str {
        &self.deployment_id
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's output (its first line, then anything it printed later).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    /// Stops the process now (as a task being stopped would); the handle stays usable.
    pub fn stop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

fn modified(path: &Path) -> std::io::Result<SystemTime> {
    std::fs::metadata(path)?.modified()
}

/// The latest modification time of `Cargo.toml` and `src/**` under `package`.
fn newest_source(package: &Path) -> Option<SystemTime> {
    let mut newest = modified(&package.join("Cargo.toml")).ok();
    let mut dirs = vec![package.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(time) = modified(&path) {
                newest = newest.max(Some(time));
            }
        }
    }
    newest
}

/// Whether `body` is a cart a frontend built for `schema` (`v1`, `v2`, `v3`) can render.
///
/// Each version requires the fields it reads and ignores additions, as a lenient JSON client
/// does: a v2 client accepts a v3 cart (v3 only adds fields), a v1 client rejects a v2 cart
/// (`total_cents` was renamed), a v3 client rejects a v2 cart (no `schema`).
pub fn validate_cart(schema: &str, body: &Value) -> Result<(), String> {
    let (total, price) = match schema {
        "v1" => ("total_cents", "price_cents"),
        "v2" | "v3" => ("total_minor_units", "price_minor_units"),
        other => return Err(format!("unknown cart schema {other:?}")),
    };
    let cart = body
        .as_object()
        .ok_or_else(|| format!("{schema} cart: expected a JSON object, got {body}"))?;
    let integer =
        |object: &serde_json::Map<String, Value>, key: &str, at: &str| match object.get(key) {
            Some(v) if v.is_i64() || v.is_u64() => Ok(()),
            Some(v) => Err(format!("{schema} cart: {at}{key} is not an integer: {v}")),
            None => Err(format!("{schema} cart: {at}{key} is missing")),
        };
    let items = cart
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{schema} cart: items is missing or not an array"))?;
    for (i, item) in items.iter().enumerate() {
        let at = format!("items[{i}].");
        let item = item
            .as_object()
            .ok_or_else(|| format!("{schema} cart: {at} is not an object"))?;
        if !item.get("sku").is_some_and(Value::is_string) {
            return Err(format!("{schema} cart: {at}sku is missing or not a string"));
        }
        integer(item, "qty", &at)?;
        integer(item, price, &at)?;
    }
    integer(cart, total, "")?;
    if !cart.get("currency").is_some_and(Value::is_string) {
        return Err(format!(
            "{schema} cart: currency is missing or not a string"
        ));
    }
    if schema == "v3" {
        if cart.get("schema").and_then(Value::as_u64) != Some(3) {
            return Err(format!(
                "v3 cart: schema must be 3, got {}",
                cart.get("schema")
                    .map_or("nothing".to_owned(), Value::to_string)
            ));
        }
        if !cart.get("discounts").is_some_and(Value::is_array) {
            return Err("v3 cart: discounts is missing or not an array".to_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1() -> Value {
        json!({"items":[{"sku":"A-1","qty":2,"price_cents":1250}],"total_cents":2500,"currency":"EUR"})
    }
    fn v2() -> Value {
        json!({"items":[{"sku":"A-1","qty":2,"price_minor_units":1250}],"total_minor_units":2500,"currency":"EUR"})
    }
    fn v3() -> Value {
        let mut cart = v2();
        cart["schema"] = json!(3);
        cart["discounts"] = json!([]);
        cart
    }

    #[test]
    fn each_client_accepts_its_own_schema() {
        assert_eq!(validate_cart("v1", &v1()), Ok(()));
        assert_eq!(validate_cart("v2", &v2()), Ok(()));
        assert_eq!(validate_cart("v3", &v3()), Ok(()));
    }

    #[test]
    fn skew_is_detected_where_it_breaks_a_client() {
        let err = validate_cart("v1", &v2()).unwrap_err();
        assert!(err.contains("price_cents"), "{err}");
        assert!(validate_cart("v1", &v3()).is_err());
        assert!(validate_cart("v2", &v1()).is_err());
        assert!(validate_cart("v3", &v2()).unwrap_err().contains("schema"));
        // Additive change: an older v2 client still renders a v3 cart.
        assert_eq!(validate_cart("v2", &v3()), Ok(()));
    }

    /// Needs `cargo build -p checkout` first (as every test of the example backend does).
    #[tokio::test]
    async fn the_checkout_backend_serves_its_schema_and_is_stopped_on_drop() {
        let backend = Backend::start("dpl-abc", "v2").await.unwrap();
        let (status, headers, body) = fetch(backend.addr(), "/v2/cart").await;
        assert_eq!(status, 200, "{:?}", backend.logs());
        assert_eq!(headers.get("x-deployment-id").unwrap(), "dpl-abc");
        let cart: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(validate_cart("v2", &cart), Ok(()));
        assert!(
            validate_cart("v1", &cart).is_err(),
            "a v1 browser breaks on a v2 cart"
        );
        let (status, headers, _) = fetch(backend.addr(), "/healthz").await;
        assert_eq!(
            (
                status,
                headers.get("x-deployment-id").unwrap().to_str().unwrap()
            ),
            (200, "dpl-abc")
        );

        let pid = backend.pid();
        drop(backend);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "killed and reaped"
        );
    }

    #[tokio::test]
    async fn a_backend_that_cannot_start_says_why() {
        let err = Backend::start("dpl-abc", "v9")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("CART_SCHEMA must be v1, v2 or v3"), "{err}");
    }

    async fn fetch(addr: SocketAddr, path: &str) -> (u16, hyper::HeaderMap, hyper::body::Bytes) {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status.as_u16(),
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[test]
    fn malformed_carts_are_rejected() {
        assert!(validate_cart("v1", &json!("nope")).is_err());
        assert!(validate_cart("v1", &json!({"items": {}})).is_err());
        let mut cart = v1();
        cart["total_cents"] = json!("2500");
        assert!(
            validate_cart("v1", &cart)
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(validate_cart("v9", &v1()).is_err());
    }
}
