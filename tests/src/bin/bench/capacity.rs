//! DynamoDB capacity units as DynamoDB bills them, worked out at the counting proxy.
//!
//! moto answers `ReturnConsumedCapacity=TOTAL` with fixed numbers (1 unit per call, ½ for a
//! `GetItem`) whatever the items' sizes, so it cannot be used. Instead, for every DynamoDB call a
//! function makes, the proxy reads the items the call touched straight from moto (side requests
//! the function never sees and the call log does not count) and applies DynamoDB's documented
//! rules (Developer Guide, "Read/write capacity mode" and "Item sizes"):
//!
//! - reads (`Query`, `Scan`, `GetItem`, `BatchGetItem`, `TransactGetItems`): the total size of
//!   the items *read*, rounded up to 4 KB per request (per item for `GetItem` and batches), 1 unit
//!   per 4 KB strongly consistent, ½ eventually consistent, 2 transactional; at least one
//!   rounding step per request. A projection or a filter does not lower what is read, so the
//!   items are fetched again without them;
//! - writes (`PutItem`, `UpdateItem`, `DeleteItem`, `BatchWriteItem`, `TransactWriteItems`):
//!   the larger of the item's size before and after, rounded up to 1 KB per item (at least 1),
//!   twice that in a transaction (a `ConditionCheck` too). A write whose condition fails is
//!   billed the same way (the item's size before).
//!
//! Item sizes follow the guide: attribute names plus values, strings as UTF-8 bytes, numbers
//! about one byte per two significant digits plus one, binary as its bytes, 3 bytes of overhead
//! per list or map plus 1 per element, 1 byte for booleans and nulls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::http::request::Parts;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Map, Value, json};

/// Read and write capacity units of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Units {
    pub read: f64,
    pub write: f64,
}

impl std::ops::AddAssign for Units {
    fn add_assign(&mut self, other: Units) {
        self.read += other.read;
        self.write += other.write;
    }
}

/// DynamoDB's size of an attribute value in DynamoDB JSON (`{"S": "…"}`).
pub fn value_size(v: &Value) -> usize {
    let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match (kind.as_str(), inner) {
        ("S", Value::String(s)) => s.len(),
        ("N", Value::String(n)) => number_size(n),
        ("B", Value::String(b)) => b.len() / 4 * 3,
        ("SS", Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::len).sum(),
        ("NS", Value::Array(a)) => a.iter().filter_map(Value::as_str).map(number_size).sum(),
        ("BS", Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|b| b.len() / 4 * 3)
            .sum(),
        ("L", Value::Array(a)) => 3 + a.iter().map(|e| value_size(e) + 1).sum::<usize>(),
        ("M", Value::Object(m)) => {
            3 + m
                .iter()
                .map(|(k, e)| k.len() + value_size(e) + 1)
                .sum::<usize>()
        }
        _ => 1,
    }
}

fn number_size(n: &str) -> usize {
    let digits = n
        .trim_start_matches('-')
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    digits.div_ceil(2) + 1
}

/// DynamoDB's size of an item.
pub fn item_size(item: &Map<String, Value>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn read_units(bytes: usize, factor: f64) -> f64 {
    bytes.div_ceil(4096).max(1) as f64 * factor
}

fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// Reads items straight from moto for the proxy, and remembers each table's key attributes.
pub struct Meter {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Arc<str>,
    keys: Mutex<HashMap<String, Vec<String>>>,
}

/// What a write call touched, read before it was forwarded.
pub struct Before {
    /// (table, key, size before, transactional)
    items: Vec<(String, Map<String, Value>, usize, bool)>,
    pub took: Duration,
}

impl Meter {
    pub fn new(client: Client<HttpConnector, Full<Bytes>>, upstream: Arc<str>) -> Meter {
        Meter {
            client,
            upstream,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// One side request to moto with the original request's headers (moto does not check
    /// signatures), answered as JSON.
    async fn side(&self, parts: &Parts, op: &str, body: &Value) -> Option<Value> {
        let mut request = Request::builder()
            .method("POST")
            .uri(format!("{}/", self.upstream));
        for (name, value) in &parts.headers {
            if name == hyper::header::CONTENT_LENGTH || name.as_str() == "x-amz-target" {
                continue;
            }
            request = request.header(name, value);
        }
        let request = request
            .header("x-amz-target", format!("DynamoDB_20120810.{op}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .ok()?;
        let answer = self.client.request(request).await.ok()?;
        let status = answer.status();
        let bytes = answer.into_body().collect().await.ok()?.to_bytes();
        if !status.is_success() {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }

    async fn key_names(&self, parts: &Parts, table: &str) -> Vec<String> {
        if let Some(keys) = self.keys.lock().expect("keys").get(table) {
            return keys.clone();
        }
        let described = self
            .side(parts, "DescribeTable", &json!({"TableName": table}))
            .await;
        let keys: Vec<String> = described
            .as_ref()
            .and_then(|d| d.pointer("/Table/KeySchema"))
            .and_then(Value::as_array)
            .map(|ks| {
                ks.iter()
                    .filter_map(|k| k.get("AttributeName")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        self.keys
            .lock()
            .expect("keys")
            .insert(table.to_owned(), keys.clone());
        keys
    }

    async fn current_size(&self, parts: &Parts, table: &str, key: &Map<String, Value>) -> usize {
        let got = self
            .side(
                parts,
                "GetItem",
                &json!({"TableName": table, "Key": key, "ConsistentRead": true}),
            )
            .await;
        got.as_ref()
            .and_then(|g| g.get("Item"))
            .and_then(Value::as_object)
            .map_or(0, item_size)
    }

    /// The key of a `Put` (from its item) or of an `Update`/`Delete`/`ConditionCheck`.
    async fn key_of(&self, parts: &Parts, action: &Value) -> Option<(String, Map<String, Value>)> {
        let table = action.get("TableName")?.as_str()?.to_owned();
        if let Some(key) = action.get("Key").and_then(Value::as_object) {
            return Some((table, key.clone()));
        }
        let item = action.get("Item")?.as_object()?;
        let names = self.key_names(parts, &table).await;
        let key: Map<String, Value> = names
            .iter()
            .filter_map(|n| Some((n.clone(), item.get(n)?.clone())))
            .collect();
        Some((table, key))
    }

    /// For a write, the items it touches and their sizes now; `None` for anything else.
    pub async fn before(&self, parts: &Parts, op: &str, body: &Value) -> Option<Before> {
        let started = Instant::now();
        let mut actions: Vec<(Value, bool)> = Vec::new();
        match op {
            "PutItem" | "UpdateItem" | "DeleteItem" => actions.push((body.clone(), false)),
            "TransactWriteItems" => {
                for t in body.get("TransactItems")?.as_array()? {
                    if let Some((_, action)) = t.as_object().and_then(|o| o.iter().next()) {
                        actions.push((action.clone(), true));
                    }
                }
            }
            "BatchWriteItem" => {
                for (table, requests) in body.get("RequestItems")?.as_object()? {
                    for r in requests.as_array()? {
                        let action = r
                            .get("PutRequest")
                            .or_else(|| r.get("DeleteRequest"))?
                            .as_object()?;
                        let mut action = action.clone();
                        action.insert("TableName".to_owned(), Value::String(table.clone()));
                        actions.push((Value::Object(action), false));
                    }
                }
            }
            _ => return None,
        }
        let mut items = Vec::new();
        for (action, transactional) in actions {
            if let Some((table, key)) = self.key_of(parts, &action).await {
                let size = self.current_size(parts, &table, &key).await;
                items.push((table, key, size, transactional));
            }
        }
        Some(Before {
            items,
            took: started.elapsed(),
        })
    }

    /// The units of a call, once moto answered it (`answer`: its JSON answer).
    pub async fn units(
        &self,
        parts: &Parts,
        op: &str,
        body: &Value,
        answer: &Value,
        before: Option<Before>,
    ) -> Option<Units> {
        if let Some(before) = before {
            let mut write = 0.0;
            for (table, key, size_before, transactional) in &before.items {
                let after = self.current_size(parts, table, key).await;
                let units = write_units((*size_before).max(after));
                write += if *transactional { 2.0 * units } else { units };
            }
            return Some(Units { read: 0.0, write });
        }
        let consistency = |b: &Value| {
            if b.get("ConsistentRead").and_then(Value::as_bool) == Some(true) {
                1.0
            } else {
                0.5
            }
        };
        match op {
            "Query" | "Scan" => {
                let narrowed = [
                    "ProjectionExpression",
                    "FilterExpression",
                    "Select",
                    "AttributesToGet",
                ]
                .iter()
                .any(|k| body.get(*k).is_some());
                let items = if narrowed {
                    let full = without_narrowing(body);
                    self.side(parts, op, &full).await?.get("Items")?.clone()
                } else {
                    answer.get("Items")?.clone()
                };
                let bytes: usize = items
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_object)
                    .map(item_size)
                    .sum();
                Some(Units {
                    read: read_units(bytes, consistency(body)),
                    write: 0.0,
                })
            }
            "GetItem" => {
                let table = body.get("TableName")?.as_str()?;
                let key = body.get("Key")?.as_object()?;
                let size = self.current_size(parts, table, key).await;
                Some(Units {
                    read: read_units(size, consistency(body)),
                    write: 0.0,
                })
            }
            "BatchGetItem" => {
                let mut read = 0.0;
                for (table, request) in body.get("RequestItems")?.as_object()? {
                    for key in request.get("Keys")?.as_array()? {
                        let size = self.current_size(parts, table, key.as_object()?).await;
                        read += read_units(size, consistency(request));
                    }
                }
                Some(Units { read, write: 0.0 })
            }
            "TransactGetItems" => {
                let mut read = 0.0;
                for t in body.get("TransactItems")?.as_array()? {
                    let get = t.get("Get")?;
                    let size = self
                        .current_size(
                            parts,
                            get.get("TableName")?.as_str()?,
                            get.get("Key")?.as_object()?,
                        )
                        .await;
                    read += read_units(size, 2.0);
                }
                Some(Units { read, write: 0.0 })
            }
            // Control-plane calls (DescribeTable, CreateTable …) are not billed in units.
            _ => Some(Units::default()),
        }
    }
}

/// A `Query`/`Scan` request that reads the same page of items but returns them whole: no
/// projection, no filter, and only the expression names and values the key condition uses.
fn without_narrowing(body: &Value) -> Value {
    let mut full = body.clone();
    let Some(o) = full.as_object_mut() else {
        return full;
    };
    for k in [
        "ProjectionExpression",
        "FilterExpression",
        "Select",
        "AttributesToGet",
        "ReturnConsumedCapacity",
    ] {
        o.remove(k);
    }
    let used: String = o
        .get("KeyConditionExpression")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for field in ["ExpressionAttributeNames", "ExpressionAttributeValues"] {
        let keep: Map<String, Value> = o
            .get(field)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| mentions(&used, k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if keep.is_empty() {
            o.remove(field);
        } else {
            o.insert(field.to_owned(), Value::Object(keep));
        }
    }
    full
}

/// Whether `expression` uses the placeholder `name` (`#pk`, `:pk`) as a whole token.
fn mentions(expression: &str, name: &str) -> bool {
    expression.match_indices(name).any(|(at, _)| {
        expression[at + name.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}
