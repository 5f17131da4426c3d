//! `checkout`: the example backend of skewguard's demo and end-to-end tests.
//!
//! A cart API whose response schema changes between deployments, as in the incident skewguard
//! exists for: `v2` renamed `total_cents` to `total_minor_units`, so a browser still running the
//! `v1` frontend breaks when its API calls land on the new backend.
//!
//! Environment: `DEPLOYMENT_ID` (required), `CART_SCHEMA` (`v1` default, `v2`, `v3`),
//! `PORT` (`0` or unset: any free port). The first stdout line is `listening on 127.0.0.1:PORT`.
//!
//! Routes: `GET /v2/cart` → the cart; `GET /healthz` → 200. Every response carries
//! `X-Deployment-ID`.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    V1,
    V2,
    V3,
}

impl Schema {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "v1" => Some(Schema::V1),
            "v2" => Some(Schema::V2),
            "v3" => Some(Schema::V3),
            _ => None,
        }
    }
}

struct Config {
    deployment_id: HeaderValue,
    schema: Schema,
}

/// The cart every deployment serves, in the shape of its schema version.
fn cart(schema: Schema) -> Value {
    match schema {
        Schema::V1 => json!({
            "items": [{"sku": "A-1", "qty": 2, "price_cents": 1250}],
            "total_cents": 2500,
            "currency": "EUR",
        }),
        Schema::V2 => json!({
            "items": [{"sku": "A-1", "qty": 2, "price_minor_units": 1250}],
            "total_minor_units": 2500,
            "currency": "EUR",
        }),
        Schema::V3 => json!({
            "schema": 3,
            "items": [{"sku": "A-1", "qty": 2, "price_minor_units": 1250}],
            "total_minor_units": 2500,
            "currency": "EUR",
            "discounts": [],
        }),
    }
}

fn respond(config: &Config, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/v2/cart") => (
            StatusCode::OK,
            "application/json",
            cart(config.schema).to_string(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (_, "/v2/cart" | "/healthz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-deployment-id", config.deployment_id.clone());
    response
}

fn config_from_env() -> Result<(Config, u16), String> {
    let deployment_id = std::env::var("DEPLOYMENT_ID")
        .ok()
        .filter(|id| !id.is_empty())
        .ok_or("DEPLOYMENT_ID is required")?;
    let deployment_id = HeaderValue::from_str(&deployment_id)
        .map_err(|_| format!("DEPLOYMENT_ID {deployment_id:?} is not a valid header value"))?;
    let schema_name = std::env::var("CART_SCHEMA").unwrap_or_else(|_| "v1".to_owned());
    let schema = Schema::parse(&schema_name)
        .ok_or_else(|| format!("CART_SCHEMA must be v1, v2 or v3, not {schema_name:?}"))?;
    let port = match std::env::var("PORT") {
        Ok(p) if !p.is_empty() => p
            .parse()
            .map_err(|_| format!("PORT must be a port number, not {p:?}"))?,
        _ => 0,
    };
    Ok((
        Config {
            deployment_id,
            schema,
        },
        port,
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (config, port) = match config_from_env() {
        Ok(c) => c,
        Err(message) => {
            eprintln!("checkout: {message}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("checkout: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    {
        let mut out = std::io::stdout().lock();
        // A harness reads this line to find the port; flush it now, stdout may be a pipe.
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    }
    let config = Arc::new(config);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("checkout: accept failed: {e}");
                continue;
            }
        };
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&config, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-request is not this server's problem.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_the_original_cart() {
        let c = cart(Schema::V1);
        assert_eq!(c["total_cents"], 2500);
        assert_eq!(c["items"][0]["price_cents"], 1250);
        assert_eq!(c["currency"], "EUR");
        assert!(c.get("total_minor_units").is_none());
    }

    #[test]
    fn v2_renames_the_money_fields() {
        let c = cart(Schema::V2);
        assert_eq!(c["total_minor_units"], 2500);
        assert_eq!(c["items"][0]["price_minor_units"], 1250);
        assert!(c.get("total_cents").is_none());
        assert!(c["items"][0].get("price_cents").is_none());
        assert!(c.get("schema").is_none());
    }

    #[test]
    fn v3_adds_to_v2() {
        let (v2, v3) = (cart(Schema::V2), cart(Schema::V3));
        assert_eq!(v3["schema"], 3);
        assert_eq!(v3["discounts"], json!([]));
        for (key, value) in v2.as_object().unwrap() {
            assert_eq!(&v3[key], value, "v3 keeps v2's {key}");
        }
    }

    #[test]
    fn schema_names() {
        assert_eq!(Schema::parse("v1"), Some(Schema::V1));
        assert_eq!(Schema::parse("v3"), Some(Schema::V3));
        assert_eq!(Schema::parse("V2"), None);
    }
}
