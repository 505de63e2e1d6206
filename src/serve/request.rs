//! What a prediction request carries: the image's bytes (the whole body, or a multipart
//! form's `file` field) and its query parameters, each checked with an error that names
//! what is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request};
use axum::http::{header, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;

const ACCEPTED: &str =
    "send the image as the body (image/jpeg, image/png or application/octet-stream) \
     or as the `file` field of a multipart/form-data form";

/// The body's image bytes. The size limit is checked against `Content-Length` before
/// anything is read, and again while reading (a chunked body has no length).
pub async fn image_bytes(
    req: Request,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {max_bytes} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large());
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let read = async {
        match content_type.as_str() {
            "image/jpeg" | "image/jpg" | "image/png" | "application/octet-stream" => {
                match Limited::new(req.into_body(), max_bytes).collect().await {
                    Ok(body) => Ok(body.to_bytes()),
                    Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
                    Err(e) => Err(ApiError::bad_request(format!(
                        "cannot read the request body: {e}"
                    ))),
                }
            }
            "multipart/form-data" => multipart_file(req).await,
            "" => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the request has no Content-Type; {ACCEPTED}"),
            )),
            other => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Type `{other}`; {ACCEPTED}"),
            )),
        }
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )
    })?
}

/// The `file` field of a multipart form (other fields are skipped).
async fn multipart_file(req: Request) -> Result<Bytes, ApiError> {
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("bad multipart form: {}", e.body_text())))?;
    let form_error = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than the limit".to_string()
        } else {
            format!("bad multipart form: {}", e.body_text())
        };
        ApiError::new(status, message)
    };
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        if field.name() == Some("file") {
            return field.bytes().await.map_err(form_error);
        }
    }
    Err(ApiError::bad_request(
        "the multipart form has no `file` field (the image goes there)",
    ))
}

/// Query parameters by name; an unknown or repeated name is an error rather than ignored.
pub fn query_params(uri: &Uri, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let mut params = BTreeMap::new();
    for (k, v) in pairs {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{k}` (this route takes: {})",
                known.join(", ")
            )));
        }
        if params.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{k}` is given twice"
            )));
        }
    }
    Ok(params)
}

/// What `/v1/detect` takes besides the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectParams {
    /// Only detections scoring at least this (0..=1).
    pub score_threshold: f32,
    /// At most this many detections, best first; `None` keeps all above the threshold.
    pub max_detections: Option<usize>,
    /// Answer a PNG with the boxes drawn instead of JSON.
    pub draw: bool,
}

/// `demo`'s default threshold: what a person looking at the answer wants to see.
pub const DEFAULT_SCORE_THRESHOLD: f32 = 0.5;

impl DetectParams {
    pub fn from_uri(uri: &Uri) -> Result<Self, ApiError> {
        let q = query_params(uri, &["score_threshold", "max_detections", "draw"])?;
        let score_threshold = match q.get("score_threshold") {
            None => DEFAULT_SCORE_THRESHOLD,
            Some(v) => v
                .parse::<f32>()
                .ok()
                .filter(|t| (0.0..=1.0).contains(t))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "score_threshold must be a number in [0, 1], got `{v}`"
                    ))
                })?,
        };
        let max_detections = match q.get("max_detections") {
            None => None,
            Some(v) => Some(v.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "max_detections must be a whole number of at least 1, got `{v}`"
                ))
            })?),
        };
        let draw = match q.get("draw").map(String::as_str) {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "draw must be 0, 1, false or true, got `{v}`"
                )))
            }
        };
        Ok(Self {
            score_threshold,
            max_detections,
            draw,
        })
    }
}

/// torchvision's and Keras' usual top-k for ImageNet answers.
pub const DEFAULT_TOPK: usize = 5;

/// `/v1/classify`'s `topk` (1..=number of classes; the default is capped by it).
pub fn classify_topk(uri: &Uri, num_classes: usize) -> Result<usize, ApiError> {
    let q = query_params(uri, &["topk"])?;
    match q.get("topk") {
        None => Ok(DEFAULT_TOPK.min(num_classes)),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=num_classes).contains(k))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "topk must be a whole number in [1, {num_classes}], got `{v}`"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn detect_params_defaults_and_errors() {
        let p = DetectParams::from_uri(&uri("/v1/detect")).unwrap();
        assert_eq!(p.score_threshold, DEFAULT_SCORE_THRESHOLD);
        assert_eq!(p.max_detections, None);
        assert!(!p.draw);
        let p = DetectParams::from_uri(&uri(
            "/v1/detect?score_threshold=0.25&max_detections=3&draw=1",
        ))
        .unwrap();
        assert_eq!(
            (p.score_threshold, p.max_detections, p.draw),
            (0.25, Some(3), true)
        );
        for (q, needle) in [
            ("score_threshold=1.5", "score_threshold must be"),
            ("score_threshold=nan", "score_threshold must be"),
            ("max_detections=0", "max_detections must be"),
            ("max_detections=-1", "max_detections must be"),
            ("draw=yes", "draw must be"),
            ("topk=3", "unknown query parameter `topk`"),
            ("draw=1&draw=0", "given twice"),
        ] {
            let e = DetectParams::from_uri(&uri(&format!("/v1/detect?{q}"))).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(needle), "{q}: {}", e.message);
        }
    }

    #[test]
    fn topk_is_bounded_by_the_class_count() {
        assert_eq!(classify_topk(&uri("/v1/classify"), 1000).unwrap(), 5);
        assert_eq!(classify_topk(&uri("/v1/classify"), 3).unwrap(), 3);
        assert_eq!(classify_topk(&uri("/v1/classify?topk=3"), 3).unwrap(), 3);
        assert!(classify_topk(&uri("/v1/classify?topk=4"), 3).is_err());
        assert!(classify_topk(&uri("/v1/classify?topk=0"), 3).is_err());
    }
}
