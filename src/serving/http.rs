//! `--serve ADDR`: the live query API over HTTP/JSON (axum on a one-thread tokio runtime of its own, so
//! requests never take a worker's core from an epoch for longer than an answer takes).
//!
//! ```text
//!   GET /health                 {"status":"ok", "process", "epoch" (last closed, process 0), "views"}
//!   GET /customers/{id}         every feature's latest observation, expected value, band, score, open
//!                               alert and the epoch it was scored at, the customer alert and silence,
//!                               last-seen; "epoch": what the answer is consistent as of
//!   GET /anomalies?kind=&feature=&level=&severity=&limit=&cursor=
//!                               open alerts in (customer, feature) order, a page at a time ("next")
//! ```
//!
//! Errors are JSON (`{"error": ...}`): a malformed id or parameter → 400, an unknown customer or path →
//! 404, a missing or wrong token → 401. On an address other than loopback a bearer token (read from a file)
//! is required; with a token every endpoint but `/health` asks for it. In a cluster a customer owned by
//! another process, and `/anomalies` outside process 0, answer 307 with that process's URL.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Owner, Serving};
use crate::keys::CustomerId;
use crate::model::AnomalyKind;
use crate::model::customer::{CUSTOMER_ALERT, CUSTOMER_FEATURE, CustomerScore, is_customer_level};
use crate::model::header::{OpenAlert, Severity, decode_alert};
use crate::timefmt::format_rfc3339;

/// Most alerts one `/anomalies` page returns.
pub const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--serve {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "--serve {addr} is not a loopback address: give --serve-token-file FILE (a bearer token every \
         request must carry)"
    )]
    TokenRequired { addr: String },
    #[error("--serve-token-file {path}: {message}")]
    Token { path: String, message: String },
}

/// Reads a bearer token from a file (surrounding whitespace ignored; it must not be empty).
pub fn read_token(path: &std::path::Path) -> Result<String, ServeError> {
    let err = |message: String| ServeError::Token {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("the file is empty".into()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("a token is one word of visible characters".into()));
    }
    Ok(token.to_string())
}

struct App {
    serving: Arc<Serving>,
    token: Option<String>,
}

/// Binds `addr` and serves on a thread of its own; returns the bound address.
pub fn serve(
    addr: &str,
    token: Option<String>,
    serving: Arc<Serving>,
) -> Result<SocketAddr, ServeError> {
    let listener = bind(addr, token.is_some())?;
    spawn(listener, token, serving)
}

/// Binds `addr` (refused on an address other than loopback without a token).
pub fn bind(addr: &str, with_token: bool) -> Result<std::net::TcpListener, ServeError> {
    let err = |source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    if !with_token && !bound.ip().is_loopback() {
        return Err(ServeError::TokenRequired {
            addr: addr.to_string(),
        });
    }
    Ok(listener)
}

/// Serves on `listener` from a thread of its own (a one-thread tokio runtime); returns its address.
pub fn spawn(
    listener: std::net::TcpListener,
    token: Option<String>,
    serving: Arc<Serving>,
) -> Result<SocketAddr, ServeError> {
    let bound = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: "?".into(),
        source,
    })?;
    let err = |source| ServeError::Bind {
        addr: bound.to_string(),
        source,
    };
    listener.set_nonblocking(true).map_err(err)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(err)?;
    let app = router(Arc::new(App { serving, token }));
    std::thread::Builder::new()
        .name("fleetwatch-serve".into())
        .spawn(move || {
            super::short_time_slices();
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::error!("--serve: {e}");
                        }
                    }
                    Err(e) => tracing::error!("--serve: {e}"),
                }
            })
        })
        .map_err(err)?;
    tracing::info!("live queries at http://{bound}/ (customers/{{id}}, anomalies, health)");
    Ok(bound)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/customers/{id}", get(customer))
        .route("/anomalies", get(anomalies))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such path") })
        .with_state(app)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn redirect(to: String) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, to.clone())],
        json!({ "redirect": to }).to_string(),
    )
        .into_response()
}

/// The request carries the token (when one is set). Constant-time in the token's content.
fn authorized(app: &App, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &app.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            json!({ "error": "a valid bearer token is required" }).to_string(),
        )
            .into_response())
    }
}

fn epoch_time(s: &Serving, epoch: u64) -> String {
    format_rfc3339((epoch * s.epoch_seconds) as i64)
}

fn alert_json(a: Option<OpenAlert>) -> Value {
    match a {
        Some(a) => json!({ "kind": a.kind.as_str(), "severity": a.severity.as_str() }),
        None => Value::Null,
    }
}

/// An epoch stored + 1 (0: none) as JSON.
fn stored_epoch(e: u32) -> Value {
    if e == 0 { Value::Null } else { json!(e - 1) }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let s = &app.serving;
    let epoch = s.with_alerts(|a| a.epoch);
    let views = s.view_epochs();
    let customers: usize = (0..s.workers_per_process)
        .filter_map(|i| s.view(i).map(|v| v.len()))
        .sum();
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "process": s.process,
            "processes": s.processes,
            "workers": s.workers_per_process,
            // The last epoch the sink closed (process 0 writes the output).
            "epoch": if s.process == 0 { json!(epoch) } else { Value::Null },
            "views": views.map(|(lo, hi)| json!({ "oldest": lo, "newest": hi })),
            "customers": customers,
        }),
    )
}

async fn customer(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return r;
    }
    let s = &app.serving;
    let customer = match CustomerId::parse(id.as_bytes(), s.customer_id_prefix.as_bytes()) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("customer id {id:?}: {e}")),
    };
    let local = match s.owner(&customer) {
        Owner::Local(w) => w,
        Owner::Process(p) => {
            return match s.servers.get(p) {
                Some(server) => redirect(format!("http://{server}/customers/{customer}")),
                None => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no server for its process",
                ),
            };
        }
    };
    let Some(view) = s.view(local) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no epoch has been closed yet",
        );
    };
    let Some(i) = view.find(&customer) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "customer {customer} is unknown (as of epoch {})",
                view.epoch
            ),
        );
    };
    let last_seen = view.last_seen[i];
    let mut fused = CustomerScore::default();
    let features: Vec<Value> = view
        .series(i)
        .enumerate()
        .map(|(f, k)| {
            let scored = view.scored_at[k];
            if scored != 0 && scored == last_seen && view.score[k].is_finite() {
                fused.add(f as u16, view.score[k]);
            }
            json!({
                "feature": feature_name(s, f as u16),
                "epoch": stored_epoch(scored),
                "observed": view.observed[k],
                "expected": view.expected[k],
                "lower": view.lower[k],
                "upper": view.upper[k],
                "score": view.score[k],
                "alert": alert_json(decode_alert(view.alert[k])),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "customer": customer.as_str(),
            "epoch": view.epoch,
            "epoch_start": epoch_time(s, view.epoch),
            "last_seen_epoch": stored_epoch(last_seen),
            "last_seen": (last_seen != 0).then(|| epoch_time(s, last_seen as u64 - 1)),
            "score": fused.score(),
            "alert": alert_json(decode_alert(view.customer_alert[i])),
            "silence": alert_json(decode_alert(view.silence[i])),
            "features": features,
        }),
    )
}

/// `/anomalies` filters.
#[derive(Debug, Default, PartialEq)]
struct Filter {
    kind: Option<AnomalyKind>,
    /// A feature index, or the customer level's ([`CUSTOMER_FEATURE`] for silence, [`CUSTOMER_ALERT`]).
    feature: Option<Vec<u16>>,
    customer_level: Option<bool>,
    severity: Option<Severity>,
    limit: usize,
    after: Option<(CustomerId, u16)>,
}

fn parse_filter(s: &Serving, query: Option<&str>) -> Result<Filter, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| e.to_string())?;
    let mut f = Filter {
        limit: DEFAULT_LIMIT,
        ..Filter::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "kind" => {
                f.kind = Some(
                    AnomalyKind::ALL
                        .into_iter()
                        .find(|a| a.as_str() == v)
                        .ok_or_else(|| format!("kind {v:?} is not one of the anomaly kinds"))?,
                )
            }
            "feature" => {
                f.feature = Some(if v == "*" {
                    vec![CUSTOMER_ALERT, CUSTOMER_FEATURE]
                } else {
                    vec![
                        s.features
                            .iter()
                            .position(|n| *n == v)
                            .ok_or_else(|| format!("feature {v:?} is not in the spec"))?
                            as u16,
                    ]
                })
            }
            "level" => {
                f.customer_level = Some(match v.as_str() {
                    "customer" => true,
                    "feature" => false,
                    _ => return Err(format!("level {v:?}: feature or customer")),
                })
            }
            "severity" => {
                f.severity = Some(match v.as_str() {
                    "warning" => Severity::Warning,
                    "critical" => Severity::Critical,
                    _ => return Err(format!("severity {v:?}: warning or critical")),
                })
            }
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| format!("limit {v:?}: a number from 1 to {MAX_LIMIT}"))?
            }
            "cursor" => f.after = Some(parse_cursor(&v).ok_or("cursor: not one this API gave")?),
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    Ok(f)
}

/// A page's cursor: the last (customer, feature) it listed.
fn cursor(customer: &CustomerId, feature: u16) -> String {
    format!("{customer}~{feature}")
}

fn parse_cursor(c: &str) -> Option<(CustomerId, u16)> {
    let (id, f) = c.rsplit_once('~')?;
    Some((CustomerId::parse(id.as_bytes(), b"").ok()?, f.parse().ok()?))
}

fn feature_name(s: &Serving, f: u16) -> &str {
    if is_customer_level(f) {
        "*"
    } else {
        s.features
            .get(f as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }
}

async fn anomalies(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return r;
    }
    let s = &app.serving;
    if s.process != 0 {
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        return match s.servers.first() {
            Some(server) => redirect(format!("http://{server}/anomalies{q}")),
            None => error(StatusCode::INTERNAL_SERVER_ERROR, "no server for process 0"),
        };
    }
    let f = match parse_filter(s, query.as_deref()) {
        Ok(f) => f,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let (epoch, page, more) = s.with_alerts(|open| {
        use std::ops::Bound;
        let start = match f.after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut page = Vec::with_capacity(f.limit.min(1024));
        let mut more = false;
        for ((c, feat), a) in open.alerts.range((start, Bound::Unbounded)) {
            let keep = f.kind.is_none_or(|k| k == a.kind)
                && f.severity.is_none_or(|v| v == a.severity)
                && f.customer_level
                    .is_none_or(|l| l == is_customer_level(*feat))
                && f.feature.as_ref().is_none_or(|fs| fs.contains(feat));
            if !keep {
                continue;
            }
            if page.len() == f.limit {
                more = true;
                break;
            }
            page.push((*c, *feat, *a));
        }
        (open.epoch, page, more)
    });
    let next = (more)
        .then(|| page.last().map(|(c, f, _)| cursor(c, *f)))
        .flatten();
    let alerts: Vec<Value> = page
        .iter()
        .map(|(c, feat, a)| {
            json!({
                "customer": c.as_str(),
                "feature": feature_name(s, *feat),
                "level": if is_customer_level(*feat) { "customer" } else { "feature" },
                "kind": a.kind.as_str(),
                "severity": a.severity.as_str(),
                "since": a.since,
                "updated": a.updated,
                "score": a.score,
                "observed": a.observed,
                "expected": a.expected,
                "lower": a.lower,
                "upper": a.upper,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "epoch": epoch,
            "count": alerts.len(),
            "alerts": alerts,
            "next": next,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving() -> Serving {
        Serving::new(&crate::spec::Spec::embedded(), 0, 1, vec!["h:1".into()])
    }

    #[test]
    fn filters_parse_and_refuse_what_they_do_not_know() {
        let s = serving();
        let f = parse_filter(
            &s,
            Some("kind=level_shift&feature=*&limit=5&severity=critical"),
        )
        .unwrap();
        assert_eq!(f.kind, Some(AnomalyKind::LevelShift));
        assert_eq!(f.feature, Some(vec![CUSTOMER_ALERT, CUSTOMER_FEATURE]));
        assert_eq!((f.limit, f.severity), (5, Some(Severity::Critical)));
        let first = s.features[0].clone();
        let f = parse_filter(&s, Some(&format!("feature={first}&level=feature"))).unwrap();
        assert_eq!((f.feature, f.customer_level), (Some(vec![0]), Some(false)));
        assert_eq!(parse_filter(&s, None).unwrap().limit, DEFAULT_LIMIT);
        for bad in [
            "kind=meteor",
            "feature=nope",
            "level=region",
            "limit=0",
            "limit=10001",
            "limit=x",
            "cursor=%%%",
            "cursor=abc",
            "colour=red",
        ] {
            assert!(parse_filter(&s, Some(bad)).is_err(), "{bad}");
        }
        let c = CustomerId::parse(b"r-1:2", b"").unwrap();
        assert_eq!(parse_cursor(&cursor(&c, 65534)), Some((c, 65534)));
    }

    #[test]
    fn tokens_are_one_visible_word_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  s3cret-token\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "s3cret-token");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_token(&p).is_err());
        std::fs::write(&p, "two words").unwrap();
        assert!(read_token(&p).is_err());
        assert!(read_token(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let s = Arc::new(serving());
        assert!(matches!(
            serve("0.0.0.0:0", None, Arc::clone(&s)),
            Err(ServeError::TokenRequired { .. })
        ));
        assert!(serve("127.0.0.1:0", None, s).is_ok());
    }
}
