//! An HTTP inference server for a trained detector or classifier (the `serve` tool):
//! axum on tokio for HTTP, one model thread fed by a dynamic batcher, bounded admission,
//! Prometheus metrics, and a web page to try the model in a browser.

pub mod batcher;
pub mod error;
pub mod metrics;
pub mod request;
pub mod routes;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use batcher::{Batcher, BatchingConfig};
pub use error::ApiError;
pub use metrics::Metrics;
pub use routes::{router, AppState, LoadedModel, RequestLimits};

use crate::engine::Predictor;
use crate::error::{Error, Result};

/// What the server was set up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The `model` field of every answer.
    pub name: String,
    pub batching: BatchingConfig,
    pub limits: RequestLimits,
}

/// How a server's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    /// Requests answered, every route and status.
    pub answered: u64,
    /// Requests that reached the router but got no answer (0 after a clean stop).
    pub unanswered: u64,
}

/// Serves on `listener` until `shutdown` completes, then stops accepting, answers every
/// request already accepted, and returns. The port is open while `load` builds the model
/// (`/healthz` answers, `/readyz` says 503), and `on_ready` is called once it is loaded;
/// an error from `load` stops the server and is returned.
pub async fn serve<L, R, S>(
    listener: TcpListener,
    config: ServeConfig,
    load: L,
    on_ready: R,
    shutdown: S,
) -> Result<ServeSummary>
where
    L: FnOnce() -> Result<Predictor> + Send + 'static,
    R: FnOnce(SocketAddr),
    S: Future<Output = ()> + Send + 'static,
{
    let addr = listener
        .local_addr()
        .map_err(|e| Error::run(format!("cannot read the listening address: {e}")))?;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        name: config.name.clone(),
        limits: config.limits,
        metrics: metrics.clone(),
        model: OnceLock::new(),
    });
    let stop = Arc::new(Notify::new());
    let stop_server = stop.clone();
    let server = tokio::spawn(
        axum::serve(listener, router(state.clone()))
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stop_server.notified() => {}
                }
            })
            .into_future(),
    );
    let loaded = tokio::task::spawn_blocking(move || -> Result<LoadedModel> {
        let predictor = Arc::new(load()?);
        let batcher = Batcher::start(predictor.clone(), config.batching, metrics)
            .map_err(|e| Error::run(format!("cannot start the model thread: {e}")))?;
        Ok(LoadedModel { predictor, batcher })
    })
    .await
    .map_err(|e| Error::run(format!("loading the model failed: {e}")))
    .and_then(|r| r);
    let load_error = match loaded {
        Ok(model) => {
            // Set once, here: `set` cannot find it set.
            if state.model.set(model).is_ok() {
                on_ready(addr);
            }
            None
        }
        Err(e) => {
            stop.notify_one();
            Some(e)
        }
    };
    let served = server.await;
    // Every connection is closed: the model thread answers what is queued and ends.
    let closing = state.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(m) = closing.model.get() {
            m.batcher.close();
        }
    })
    .await
    .ok();
    if let Some(e) = load_error {
        return Err(e);
    }
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::run(format!("the server failed: {e}"))),
        Err(e) => return Err(Error::run(format!("the server failed: {e}"))),
    }
    let answered = state.metrics.answered();
    let started = state.metrics.started.load(Ordering::Relaxed);
    Ok(ServeSummary {
        answered,
        unanswered: started.saturating_sub(answered),
    })
}
