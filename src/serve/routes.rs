//! The HTTP routes. Handlers only parse, admit and wait: decoding, preparing and drawing
//! run on tokio's blocking threads and the model on its own thread, so the async threads
//! stay free to accept and answer (a health check is answered during a long batch).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use image::DynamicImage;
use serde::Serialize;

use super::batcher::{BatchError, Batcher};
use super::error::ApiError;
use super::metrics::Metrics;
use super::request::{classify_topk, image_bytes, DetectParams};
use crate::data::image_io::{decode_image_bytes, ImageDecodeError};
use crate::engine::{Detection, Predicted, Predictor};
use crate::structures::ModelInput;
use crate::utils::visualizer::{draw_labeled_boxes, LabeledBox};

/// Limits on what one request may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    /// Most pixels (width x height) of an image, checked from its header before decoding.
    pub max_pixels: u64,
    /// Longest wait for a request's body to arrive.
    pub body_timeout: Duration,
}

/// The model once loaded.
pub struct LoadedModel {
    pub predictor: Arc<Predictor>,
    pub batcher: Batcher,
}

pub struct AppState {
    /// The `model` field of every answer.
    pub name: String,
    pub limits: RequestLimits,
    pub metrics: Arc<Metrics>,
    pub model: OnceLock<LoadedModel>,
}

impl AppState {
    fn loaded(&self) -> Result<&LoadedModel, ApiError> {
        self.model
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading", 1))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/model", get(model_info))
        .route("/v1/detect", post(detect))
        .route("/v1/classify", post(classify))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts every answer by route pattern and status, with its latency.
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    state.metrics.started.fetch_add(1, Ordering::Relaxed);
    let response = next.run(req).await;
    state.metrics.record_request(
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.loaded() {
        Ok(_) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(state.model.get().is_some()),
    )
        .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}; the routes are POST /v1/detect, POST /v1/classify, \
             GET /v1/model, GET /healthz, GET /readyz, GET /metrics and GET /",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    let allowed = if uri.path().starts_with("/v1/detect") || uri.path().starts_with("/v1/classify")
    {
        "POST"
    } else {
        "GET"
    };
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} takes {allowed}, not {method}", uri.path()),
    )
}

#[derive(Serialize)]
struct ModelInfo<'a> {
    model: &'a str,
    /// `detect` or `classify`: the route this model answers.
    task: &'static str,
    architecture: &'a str,
    classes: &'a [String],
    max_batch: usize,
    max_wait_ms: u128,
    queue: usize,
    max_body_bytes: usize,
    max_pixels: u64,
}

async fn model_info(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let m = state.loaded()?;
    let b = m.batcher.config();
    Ok(Json(ModelInfo {
        model: &state.name,
        task: if m.predictor.is_classifier() {
            "classify"
        } else {
            "detect"
        },
        architecture: &m.predictor.config().model.meta_architecture,
        classes: m.predictor.class_names(),
        max_batch: b.max_batch,
        max_wait_ms: b.max_wait.as_millis(),
        queue: b.queue,
        max_body_bytes: state.limits.max_body_bytes,
        max_pixels: state.limits.max_pixels,
    })
    .into_response())
}

#[derive(Serialize)]
struct ImageSize {
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct DetectionJson<'a> {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    class_id: usize,
    class_name: &'a str,
}

#[derive(Serialize)]
struct DetectAnswer<'a> {
    model: &'a str,
    image: ImageSize,
    detections: Vec<DetectionJson<'a>>,
    time_ms: f64,
}

#[derive(Serialize)]
struct ClassJson<'a> {
    class_id: usize,
    class_name: &'a str,
    probability: f32,
}

#[derive(Serialize)]
struct ClassifyAnswer<'a> {
    model: &'a str,
    image: ImageSize,
    predictions: Vec<ClassJson<'a>>,
    time_ms: f64,
}

fn decode_error(e: ImageDecodeError) -> ApiError {
    let status = match e {
        ImageDecodeError::UnknownFormat | ImageDecodeError::UnsupportedFormat(_) => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, format!("cannot decode the image: {e}"))
}

/// Reads, decodes and prepares the request's image, then waits for its prediction.
async fn run_model(
    state: &AppState,
    model: &LoadedModel,
    req: Request,
) -> Result<(DynamicImage, Predicted), ApiError> {
    let admission = model.batcher.admit().ok_or_else(|| {
        ApiError::unavailable(
            format!(
                "the server is busy ({} requests queued); try again shortly",
                model.batcher.config().queue
            ),
            1,
        )
    })?;
    let limits = state.limits;
    let bytes = image_bytes(req, limits.max_body_bytes, limits.body_timeout).await?;
    let predictor = model.predictor.clone();
    let (image, input): (DynamicImage, ModelInput) = tokio::task::spawn_blocking(move || {
        let image = decode_image_bytes(&bytes, limits.max_pixels).map_err(decode_error)?;
        let input = predictor
            .prepare(&image)
            .map_err(|e| ApiError::bad_request(format!("cannot use the image: {e}")))?;
        Ok::<_, ApiError>((image, input))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let predicted = model
        .batcher
        .predict(input, admission)
        .await
        .map_err(|e| match e {
            BatchError::ShuttingDown => ApiError::unavailable("the server is stopping", 5),
            BatchError::Model(m) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the model failed: {m}"),
            ),
        })?;
    Ok((image, predicted))
}

fn wrong_task(predictor: &Predictor) -> ApiError {
    let (kind, route) = if predictor.is_classifier() {
        ("a classifier", "POST /v1/classify")
    } else {
        ("a detector", "POST /v1/detect")
    };
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "this server's model is {kind} ({}); use {route}",
            predictor.config().model.meta_architecture
        ),
    )
}

/// The detections an answer reports: best first, at least the threshold, at most the count.
pub fn select_detections(mut dets: Vec<Detection>, params: &DetectParams) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.retain(|d| d.score >= params.score_threshold);
    if let Some(n) = params.max_detections {
        dets.truncate(n);
    }
    dets
}

async fn detect(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let received = Instant::now();
    let model = state.loaded()?;
    if model.predictor.is_classifier() {
        return Err(wrong_task(&model.predictor));
    }
    let params = DetectParams::from_uri(req.uri())?;
    let (image, predicted) = run_model(&state, model, req).await?;
    let Predicted::Detections(dets) = predicted else {
        return Err(wrong_task(&model.predictor));
    };
    let dets = select_detections(dets, &params);
    if params.draw {
        let png = tokio::task::spawn_blocking(move || draw_png(image, &dets))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        return Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response());
    }
    let answer = DetectAnswer {
        model: &state.name,
        image: ImageSize {
            width: image.width(),
            height: image.height(),
        },
        detections: dets
            .iter()
            .map(|d| DetectionJson {
                bbox: d.bbox,
                score: d.score,
                class_id: d.class_id,
                class_name: &d.class_name,
            })
            .collect(),
        time_ms: received.elapsed().as_secs_f64() * 1e3,
    };
    Ok(Json(answer).into_response())
}

/// The image with its detections drawn as `demo` draws them, as PNG bytes.
fn draw_png(image: DynamicImage, dets: &[Detection]) -> Result<Vec<u8>, ApiError> {
    let mut rgb = image.into_rgb8();
    let boxes: Vec<LabeledBox> = dets.iter().map(Detection::labeled_box).collect();
    draw_labeled_boxes(&mut rgb, &boxes, f64::NEG_INFINITY);
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(rgb)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(png)
}

async fn classify(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let received = Instant::now();
    let model = state.loaded()?;
    if !model.predictor.is_classifier() {
        return Err(wrong_task(&model.predictor));
    }
    let names = model.predictor.class_names();
    let topk = classify_topk(req.uri(), names.len())?;
    let (image, predicted) = run_model(&state, model, req).await?;
    let Predicted::Probabilities(probs) = predicted else {
        return Err(wrong_task(&model.predictor));
    };
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let answer = ClassifyAnswer {
        model: &state.name,
        image: ImageSize {
            width: image.width(),
            height: image.height(),
        },
        predictions: order
            .into_iter()
            .take(topk)
            .map(|i| ClassJson {
                class_id: i,
                class_name: names.get(i).map(String::as_str).unwrap_or(""),
                probability: probs[i],
            })
            .collect(),
        time_ms: received.elapsed().as_secs_f64() * 1e3,
    };
    Ok(Json(answer).into_response())
}
