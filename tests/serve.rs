//! `serve` as a client sees it, on 127.0.0.1: answers equal `Predictor`'s, every bad
//! request gets its status and a JSON error while the server stays up, concurrent clients
//! are batched, a full queue answers 503, and SIGTERM under load answers every request
//! the server accepted before it exits 0.

mod common;
#[path = "common/http.rs"]
mod http;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use candletron::engine::{inference_config, Predicted, Predictor};
use candletron::serve::request::DetectParams;
use candletron::serve::routes::select_detections;

const CONFIG: &str = "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml";

struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Server {
    /// Starts `serve` with the detector of `CONFIG`, `weights` and one class, `face`.
    fn start(weights: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "--config-file",
            CONFIG,
            "--class-names",
            "face",
            "--weights",
        ];
        args.push(weights.to_str().unwrap());
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    /// Starts `serve ARGS --port 0` and waits for its `listening on` line.
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        let line = stdout
            .recv_timeout(Duration::from_secs(120))
            .expect("serve printed no `listening on` line");
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first stdout line: {line:?}"))
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to exit; its exit status, last stdout line and stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let last = self.stdout.try_iter().last().unwrap_or_default();
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (status, last, stderr.join().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn weights(name: &str) -> PathBuf {
    let dir = common::tmp_dir(name);
    let w = dir.join("random.safetensors");
    common::save_random_weights(CONFIG, 11, &w);
    w
}

fn predictor(weights: &Path) -> Predictor {
    let cfg = inference_config(Some(Path::new(CONFIG)), Some(weights), &[]).unwrap();
    Predictor::from_config(&cfg)
        .unwrap()
        .with_class_names(vec!["face".into()])
        .unwrap()
}

fn encode(img: image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn picture(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 3 + seed * 40) % 256;
        image::Rgb([v as u8, ((x * y + seed) % 256) as u8, (255 - v) as u8])
    })
}

/// What `/v1/detect?{query}` must answer for `image`: `Predictor`'s detections after
/// the same selection, as (box, score, class id, class name).
type Expected = Vec<([f32; 4], f32, usize, String)>;

fn expected(p: &Predictor, image: &[u8], query: &str) -> Expected {
    let img = image::load_from_memory(image).unwrap();
    let Predicted::Detections(dets) = p.predict(&img).unwrap() else {
        panic!("a detector")
    };
    let params = DetectParams::from_uri(&format!("/v1/detect?{query}").parse().unwrap()).unwrap();
    select_detections(dets, &params)
        .into_iter()
        .map(|d| (d.bbox, d.score, d.class_id, d.class_name))
        .collect()
}

fn answered(json: &serde_json::Value) -> Expected {
    json["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b = d["box"].as_array().unwrap();
            let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
            (
                [f(&b[0]), f(&b[1]), f(&b[2]), f(&b[3])],
                f(&d["score"]),
                d["class_id"].as_u64().unwrap() as usize,
                d["class_name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A JPEG whose header claims `w` x `h` pixels over a 16 x 16 image.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut jpeg = encode(picture(16, 16, 0), image::ImageFormat::Jpeg);
    let sof = jpeg.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

/// A PNG whose header says 0 x `h` (valid CRC, so only the size is wrong).
fn png_zero_width() -> Vec<u8> {
    let mut png = encode(picture(8, 8, 0), image::ImageFormat::Png);
    // Signature (8), IHDR length (4) and type (4), then width.
    png[16..20].copy_from_slice(&0u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

fn assert_error(r: &http::Response, status: u16, needle: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let j = r.json();
    let msg = j["error"].as_str().unwrap_or_else(|| panic!("{what}: {j}"));
    assert!(msg.contains(needle), "{what}: {msg}");
    assert_eq!(j["status"].as_u64(), Some(status as u64), "{what}");
}

#[test]
fn answers_equal_the_predictor_and_bad_requests_get_their_status() {
    let w = weights("serve-answers");
    let p = predictor(&w);
    let server = Server::start(
        &w,
        &[
            "--max-body-mb",
            "1",
            "--max-pixels",
            "100000",
            "--body-timeout-s",
            "1",
        ],
    );
    let a = server.addr;
    assert_eq!(http::get(a, "/healthz").status, 200);
    assert_eq!(http::get(a, "/readyz").json()["status"], "ready");
    let info = http::get(a, "/v1/model").json();
    assert_eq!(info["task"], "detect");
    assert_eq!(info["classes"], serde_json::json!(["face"]));
    assert!(http::get(a, "/").text().contains("<canvas"));

    // The answer equals the Predictor's, as JSON, as multipart and as PNG.
    let png = encode(picture(160, 120, 1), image::ImageFormat::Png);
    let jpeg = encode(picture(120, 160, 2), image::ImageFormat::Jpeg);
    for (bytes, ct, query) in [
        (&png, "image/png", "score_threshold=0"),
        (&jpeg, "image/jpeg", "score_threshold=0&max_detections=7"),
        (&png, "application/octet-stream", ""),
    ] {
        let r = http::post(a, &format!("/v1/detect?{query}"), ct, bytes);
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        let want = expected(&p, bytes, query);
        assert_eq!(answered(&j), want, "{ct} {query}");
        let img = image::load_from_memory(bytes).unwrap();
        assert_eq!(j["image"]["width"].as_u64(), Some(img.width() as u64));
        assert!(j["time_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(j["model"], "random");
    }
    let all = expected(&p, &png, "score_threshold=0");
    assert!(all.len() > 7, "a random model's detections at threshold 0");
    let (ct, form) = http::multipart(&[("note", b"x"), ("file", &png)]);
    let r = http::post(a, "/v1/detect?score_threshold=0", &ct, &form);
    assert_eq!(answered(&r.json()), all);
    let r = http::post(a, "/v1/detect?score_threshold=0&draw=1", "image/png", &png);
    assert_eq!(r.header("content-type"), Some("image/png"));
    let drawn = image::load_from_memory(&r.body).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), (160, 120));
    assert_ne!(drawn, picture(160, 120, 1), "boxes are drawn");

    // Bad requests: status, JSON error naming the problem, server still up.
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    let mut truncated = jpeg.clone();
    truncated.truncate(jpeg.len() / 2);
    let (ct_nofile, form_nofile) = http::multipart(&[("image", &png)]);
    let big = encode(picture(400, 300, 3), image::ImageFormat::Png);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/detect",
            "text/plain",
            b"hello".to_vec(),
            415,
            "unsupported Content-Type",
        ),
        ("/v1/detect", "", png.clone(), 415, "no Content-Type"),
        (
            "/v1/detect",
            "image/png",
            b"hello".to_vec(),
            415,
            "unknown format",
        ),
        (
            "/v1/detect",
            "image/png",
            gif,
            415,
            "GIF images are not supported",
        ),
        ("/v1/detect", "image/jpeg", Vec::new(), 400, "empty"),
        ("/v1/detect", "image/jpeg", truncated, 400, "truncated JPEG"),
        (
            "/v1/detect",
            "image/jpeg",
            jpeg_claiming(60000, 60000),
            400,
            "limit of 100000",
        ),
        ("/v1/detect", "image/png", big, 400, "120000 pixels"),
        (
            "/v1/detect",
            "image/png",
            png_zero_width(),
            400,
            "cannot decode",
        ),
        (
            "/v1/detect",
            &ct_nofile,
            form_nofile,
            400,
            "no `file` field",
        ),
        (
            "/v1/detect?score_threshold=2",
            "image/png",
            png.clone(),
            400,
            "score_threshold",
        ),
        (
            "/v1/detect?max_detections=0",
            "image/png",
            png.clone(),
            400,
            "max_detections",
        ),
        (
            "/v1/detect?topk=1",
            "image/png",
            png.clone(),
            400,
            "unknown query parameter",
        ),
        (
            "/v1/classify",
            "image/png",
            png.clone(),
            404,
            "is a detector",
        ),
        (
            "/v2/detect",
            "image/png",
            png.clone(),
            404,
            "no route POST /v2/detect",
        ),
        ("/healthz", "image/png", png.clone(), 405, "takes GET"),
    ];
    for (path, ct, body, status, needle) in &cases {
        let r = http::post(a, path, ct, body);
        assert_error(&r, *status, needle, &format!("POST {path} {ct}"));
        assert_eq!(http::get(a, "/healthz").status, 200);
    }
    assert_error(
        &http::get(a, "/v1/detect"),
        405,
        "takes POST",
        "GET /v1/detect",
    );
    // A body over the limit is refused from its Content-Length, before it is sent...
    let r = http::raw(
        a,
        "POST /v1/detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 5000000",
        &[],
    )
    .unwrap();
    assert_error(
        &r,
        413,
        "larger than the limit",
        "Content-Length over the limit",
    );
    // ...and while reading one without a length.
    let chunk = vec![0u8; 300_000];
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = http::raw(
        a,
        "POST /v1/detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked",
        &chunked,
    )
    .unwrap();
    assert_error(
        &r,
        413,
        "larger than the limit",
        "chunked body over the limit",
    );
    // A body that never arrives.
    let r = http::raw(
        a,
        "POST /v1/detect HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 1000",
        b"\x89PNG",
    )
    .unwrap();
    assert_error(&r, 408, "did not arrive within 1 s", "slow body");

    // Every answer so far is counted by route and status.
    let metrics = http::get(a, "/metrics").text();
    for line in [
        "candletron_http_requests_total{route=\"/v1/detect\",status=\"415\"} 4",
        "candletron_http_requests_total{route=\"/v1/detect\",status=\"413\"} 2",
        "candletron_model_ready 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    server.signal(libc::SIGTERM);
    let (status, last, stderr) = server.wait();
    assert!(status.success(), "{status}: {stderr}");
    assert!(last.ends_with(", 0 unanswered"), "{last}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_classifier_answers_its_predictors_top_k() {
    let config = "configs/imagenet/mobilenet_v2_classifier.yaml";
    let cfg = inference_config(Some(Path::new(config)), None, &[]).unwrap();
    let p = Predictor::from_config(&cfg).unwrap();
    let server = Server::spawn(&["--config-file", config, "--name", "mobilenet_v2"]);
    let a = server.addr;
    let info = http::get(a, "/v1/model").json();
    assert_eq!(info["task"], "classify");
    assert_eq!(info["classes"].as_array().unwrap().len(), 1000);
    let png = encode(picture(300, 200, 7), image::ImageFormat::Png);
    let img = image::load_from_memory(&png).unwrap();
    let Predicted::Probabilities(probs) = p.predict(&img).unwrap() else {
        panic!("a classifier")
    };
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]).then(i.cmp(&j)));
    for (query, k) in [("", 5), ("?topk=3", 3), ("?topk=1000", 1000)] {
        let r = http::post(a, &format!("/v1/classify{query}"), "image/png", &png);
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["model"], "mobilenet_v2");
        let got = j["predictions"].as_array().unwrap();
        assert_eq!(got.len(), k);
        for (g, &want) in got.iter().zip(&order) {
            assert_eq!(g["class_id"].as_u64(), Some(want as u64));
            assert_eq!(
                g["class_name"].as_str(),
                Some(p.class_names()[want].as_str())
            );
            assert_eq!(g["probability"].as_f64().unwrap() as f32, probs[want]);
        }
    }
    assert_error(
        &http::post(a, "/v1/classify?topk=1001", "image/png", &png),
        400,
        "topk must be",
        "topk over the class count",
    );
    assert_error(
        &http::post(a, "/v1/detect", "image/png", &png),
        404,
        "is a classifier",
        "detect on a classifier",
    );
}

#[test]
fn a_model_that_cannot_load_is_an_error_before_listening() {
    let o = Command::new(env!("CARGO_BIN_EXE_serve"))
        .args([
            "--config-file",
            CONFIG,
            "--weights",
            "no/such/weights.safetensors",
        ])
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("listening on"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no/such/weights.safetensors"), "{err}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let w = weights("serve-queue");
    // One place; a lone request waits 3 s for a second one to batch with.
    let server = Server::start(
        &w,
        &["--queue", "1", "--max-batch", "2", "--max-wait-ms", "3000"],
    );
    let a = server.addr;
    let png = encode(picture(64, 48, 4), image::ImageFormat::Png);
    let first = {
        let png = png.clone();
        std::thread::spawn(move || http::post(a, "/v1/detect", "image/png", &png))
    };
    // Wait until the first request holds the place.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http::get(a, "/metrics")
        .text()
        .contains("candletron_requests_in_flight 1")
    {
        assert!(Instant::now() < deadline, "the first request never got in");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = http::post(a, "/v1/detect", "image/png", &png);
    assert_error(&r, 503, "busy", "second request");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(http::post(a, "/v1/detect", "image/png", &png).status, 200);
}

#[test]
fn concurrent_clients_are_batched_and_sigterm_answers_every_accepted_request() {
    let w = weights("serve-load");
    let p = predictor(&w);
    let server = Server::start(
        &w,
        &["--max-batch", "8", "--max-wait-ms", "20", "--queue", "64"],
    );
    let a = server.addr;
    // Two image sizes: a batch runs each size as its own model call.
    let images: Arc<Vec<(Vec<u8>, Expected)>> = Arc::new(
        [(96u32, 64u32, 5u32), (64, 96, 6)]
            .iter()
            .map(|&(w, h, seed)| {
                let png = encode(picture(w, h, seed), image::ImageFormat::Png);
                let want = expected(&p, &png, "score_threshold=0.01");
                (png, want)
            })
            .collect(),
    );
    // Every response any client got, of any route.
    let responses = Arc::new(AtomicU64::new(0));

    // 64 clients at once, 2 requests each: all answered correctly.
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (images, responses) = (images.clone(), responses.clone());
            std::thread::spawn(move || {
                for k in 0..2 {
                    let (png, want) = &images[(i + k) % 2];
                    let r = http::post(a, "/v1/detect?score_threshold=0.01", "image/png", png);
                    responses.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert_eq!(&answered(&r.json()), want);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let metrics = http::get(a, "/metrics").text();
    responses.fetch_add(1, Ordering::SeqCst);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    let calls = value("candletron_batch_size_count");
    let single = value("candletron_batch_size_bucket{le=\"1\"}");
    assert!(
        calls - single >= 1.0,
        "no batch of more than one image:\n{metrics}"
    );
    assert!(calls < 128.0, "{calls} model calls for 128 requests");
    assert_eq!(
        value("candletron_http_requests_total{route=\"/v1/detect\",status=\"200\"}"),
        128.0
    );

    // SIGTERM under load: clients keep sending until the server refuses them.
    let stop_seen = Arc::new(AtomicBool::new(false));
    let ok_after = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..16)
        .map(|i| {
            let (images, responses, ok_after, stop_seen) = (
                images.clone(),
                responses.clone(),
                ok_after.clone(),
                stop_seen.clone(),
            );
            std::thread::spawn(move || loop {
                let (png, want) = &images[i % 2];
                match http::try_post(a, "/v1/detect?score_threshold=0.01", "image/png", png) {
                    Ok(r) => {
                        responses.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(r.status, 200, "during shutdown: {}", r.text());
                        assert_eq!(&answered(&r.json()), want);
                        ok_after.fetch_add(1, Ordering::SeqCst);
                    }
                    // Not accepted: the listener is closed (or closing, for a connection
                    // still in the kernel's backlog).
                    Err(http::Failure::Refused | http::Failure::ClosedBeforeResponse(_))
                        if stop_seen.load(Ordering::SeqCst) =>
                    {
                        return
                    }
                    Err(e) => panic!("request failed: {e}"),
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok_after.load(Ordering::SeqCst) < 16 {
        assert!(Instant::now() < deadline, "no load");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop_seen.store(true, Ordering::SeqCst);
    server.signal(libc::SIGTERM);
    for l in loaders {
        l.join().unwrap();
    }
    let (status, last, stderr) = server.wait();
    assert!(status.success(), "{status}: {stderr}");
    // The server answered exactly the requests the clients got answers to, and left none.
    assert_eq!(
        last,
        format!(
            "stopped: {} requests answered, 0 unanswered",
            responses.load(Ordering::SeqCst)
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
