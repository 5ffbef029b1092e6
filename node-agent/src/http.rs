//! Health and metrics, on kube-proxy's addresses so whatever watches
//! kube-proxy keeps working: `/healthz` and `/livez` on `0.0.0.0:10256`
//! (load balancer health checks), `/metrics` on `127.0.0.1:10249` (node-local
//! scrapers). Two listeners, each switchable off; when both are given the same
//! address one listener serves all three paths.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// kube-proxy's `--healthz-bind-address` port.
pub const HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's `--metrics-bind-address` port.
pub const METRICS_PORT: u16 = 10249;

/// A bind address as kube-proxy's flags take it: `IP:PORT`, `[IPv6]:PORT`, a
/// bare IP (then `default_port`), or `""` / `0` for "do not listen".
pub fn parse_bind(s: &str, default_port: u16) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(Some(SocketAddr::new(ip, default_port))),
        Err(_) => Err(format!(
            "{s:?} is not IP:PORT, [IPv6]:PORT, an IP, or \"\"/0 (disabled)"
        )),
    }
}

#[derive(Clone)]
struct Ctx {
    metrics: Arc<Metrics>,
    stale_after: Duration,
}

async fn healthz(State(c): State<Ctx>) -> impl IntoResponse {
    if c.metrics.healthy(c.stale_after) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: mesh not up or no recent successful reconcile\n",
        )
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn render_metrics(State(c): State<Ctx>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics.render_now().await,
    )
}

/// Which paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Routes {
    health: bool,
    metrics: bool,
}

fn router(routes: Routes, ctx: Ctx) -> Router {
    let mut app = Router::new();
    if routes.health {
        app = app.route("/healthz", get(healthz)).route("/livez", get(livez));
    }
    if routes.metrics {
        app = app.route("/metrics", get(render_metrics));
    }
    app.with_state(ctx)
}

/// The listeners to open: one per distinct address.
fn plan(healthz: Option<SocketAddr>, metrics: Option<SocketAddr>) -> Vec<(SocketAddr, Routes)> {
    match (healthz, metrics) {
        (Some(h), Some(m)) if h == m => vec![(
            h,
            Routes {
                health: true,
                metrics: true,
            },
        )],
        (h, m) => h
            .map(|a| {
                (
                    a,
                    Routes {
                        health: true,
                        metrics: false,
                    },
                )
            })
            .into_iter()
            .chain(m.map(|a| {
                (
                    a,
                    Routes {
                        health: false,
                        metrics: true,
                    },
                )
            }))
            .collect(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("listen on {addr} for {what}: {source}")]
pub struct ListenError {
    addr: SocketAddr,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// What [`serve`] bound (port 0 resolved), for the log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bound {
    pub healthz: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// Bind every listener first (so a taken port fails start-up, and nothing
/// serves half), then serve until the process ends.
pub async fn serve(
    healthz: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    stale_after: Duration,
) -> Result<Bound, ListenError> {
    let ctx = Ctx { metrics, stale_after };
    let mut listeners = Vec::new();
    let mut bound = Bound::default();
    for (addr, routes) in plan(healthz, metrics_addr) {
        let what = match (routes.health, routes.metrics) {
            (true, true) => "/healthz, /livez and /metrics",
            (true, false) => "/healthz and /livez",
            _ => "/metrics",
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError { addr, what, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ListenError { addr, what, source })?;
        if routes.health {
            bound.healthz = Some(local);
        }
        if routes.metrics {
            bound.metrics = Some(local);
        }
        listeners.push((listener, router(routes, ctx.clone())));
    }
    for (listener, app) in listeners {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "health/metrics server stopped");
            }
        });
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bind_addresses_parse_like_kube_proxy_flags() {
        let cases: [(&str, Result<Option<&str>, ()>); 9] = [
            ("0.0.0.0:10256", Ok(Some("0.0.0.0:10256"))),
            ("127.0.0.1:10249", Ok(Some("127.0.0.1:10249"))),
            ("[::]:10256", Ok(Some("[::]:10256"))),
            ("10.0.0.5", Ok(Some("10.0.0.5:10256"))),
            ("::1", Ok(Some("[::1]:10256"))),
            ("[fd00::1]", Ok(Some("[fd00::1]:10256"))),
            ("", Ok(None)),
            ("0", Ok(None)),
            ("localhost:10256", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_bind(input, HEALTHZ_PORT);
            match want {
                Ok(w) => assert_eq!(got, Ok(w.map(|a| a.parse().unwrap())), "{input:?}"),
                Err(()) => assert!(got.unwrap_err().contains("is not IP:PORT"), "{input:?}"),
            }
        }
    }

    #[test]
    fn one_listener_when_both_share_an_address() {
        let a: SocketAddr = "127.0.0.1:10256".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10249".parse().unwrap();
        let both = Routes {
            health: true,
            metrics: true,
        };
        assert_eq!(plan(Some(a), Some(a)), [(a, both)]);
        assert_eq!(plan(Some(a), Some(b)).len(), 2);
        assert_eq!(
            plan(None, Some(b)),
            [(
                b,
                Routes {
                    health: false,
                    metrics: true
                }
            )]
        );
        assert!(plan(None, None).is_empty());
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn health_and_metrics_are_separate_listeners() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Port 0 twice is "the same address": give the metrics side its own
        // port first so the two listeners really are two.
        let probe = std::net::TcpListener::bind(any).unwrap();
        let metrics_at = probe.local_addr().unwrap();
        drop(probe);
        let m = Arc::new(Metrics::default());
        let bound = serve(Some(any), Some(metrics_at), m, Duration::from_secs(60))
            .await
            .unwrap();
        let (h, mt) = (bound.healthz.unwrap(), bound.metrics.unwrap());
        assert_ne!(h, mt);
        assert!(get(h, "/livez").await.contains("200"));
        // Not reconciled yet: not healthy.
        assert!(get(h, "/healthz").await.contains("503"));
        assert!(get(h, "/metrics").await.contains("404"));
        assert!(get(mt, "/metrics").await.contains("200"));
        assert!(get(mt, "/healthz").await.contains("404"));
        // A taken port is an error naming the address and the paths.
        let e = serve(Some(h), None, Arc::new(Metrics::default()), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("listen on {h} for /healthz and /livez:")),
            "{e}"
        );
    }
}
