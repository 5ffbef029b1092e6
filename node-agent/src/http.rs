//! `/healthz`, `/livez` and `/metrics` (kube-proxy's port 10256 by default,
//! so load balancer health checks aimed at kube-proxy keep working).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

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
        c.metrics.render(),
    )
}

/// Bind `addr` and serve until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, stale_after: Duration) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(render_metrics))
        .with_state(Ctx { metrics, stale_after });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health/metrics server stopped");
        }
    });
    Ok(local)
}
