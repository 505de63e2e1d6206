//! `MODEL.WEIGHTS` as a URL: downloaded once into the cache, hash-checked, atomic, with
//! torch.hub's cache reused and a clear error offline. Served from 127.0.0.1 by the test.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candletron::checkpoint::download::cached_path;
use candletron::checkpoint::{read_checkpoint, write_safetensors};

/// Serves `body` for every GET on a free loopback port, counting requests; with
/// `truncate`, announces the full length but sends half and closes.
fn serve(body: Vec<u8>, truncate: bool) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut s) = stream else { continue };
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            counter.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let sent = if truncate {
                &body[..body.len() / 2]
            } else {
                &body[..]
            };
            let _ = s.write_all(sent);
        }
    });
    (port, hits)
}

fn sha256_hex(path: &Path) -> String {
    use std::process::Command;
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One test, because the cache folders come from process-wide environment variables.
#[test]
fn url_weights_are_cached_checked_and_atomic() {
    let tmp = std::env::temp_dir().join(format!("candletron-download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let cache = tmp.join("cache");
    let torch_home = tmp.join("torch");
    std::env::set_var("CANDLETRON_CACHE", &cache);
    std::env::set_var("TORCH_HOME", &torch_home);

    // A small real checkpoint and its SHA-256.
    let src = tmp.join("w.safetensors");
    let t = candle_core::Tensor::arange(0f32, 24.0, &candle_core::Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
    write_safetensors(&[("layer.weight".to_string(), t.clone())], &src).unwrap();
    let body = std::fs::read(&src).unwrap();
    let digest = sha256_hex(&src);
    let good = format!("w-{}.safetensors", &digest[..8]);
    let checkpoints = cache.join("checkpoints");

    // Downloaded once, then served from the cache.
    let (port, hits) = serve(body.clone(), false);
    let url = format!("http://127.0.0.1:{port}/models/{good}");
    let path = cached_path(&url).unwrap();
    assert_eq!(path, checkpoints.join(&good));
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let again = cached_path(&url).unwrap();
    assert_eq!(again, path);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second call must not download"
    );
    let tensors = read_checkpoint(&path).unwrap();
    assert_eq!(tensors[0].0, "layer.weight");

    // A file whose content does not match the hash in its name is refused and not kept.
    let wrong_hash = if digest.starts_with("00000000") {
        "11111111"
    } else {
        "00000000"
    };
    let bad = format!("w-{wrong_hash}.safetensors");
    let err = cached_path(&format!("http://127.0.0.1:{port}/models/{bad}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256") && err.contains(wrong_hash), "{err}");
    assert!(!checkpoints.join(&bad).exists());

    // A cut transfer leaves nothing behind, not even the temporary file.
    let (cut_port, _) = serve(body.clone(), true);
    let err = cached_path(&format!("http://127.0.0.1:{cut_port}/x/cut.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot download"), "{err}");
    assert_eq!(files_in(&checkpoints), vec![good.clone()]);

    // Offline (nothing listens): the message says what to do instead.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = cached_path(&format!("http://127.0.0.1:{closed_port}/m/off.pth"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot download") && err.contains("Without network access"),
        "{err}"
    );
    assert!(
        err.contains(&checkpoints.join("off.pth").display().to_string()),
        "{err}"
    );

    // A file torch.hub already has is used as it is, without a request.
    let hub = torch_home.join("hub").join("checkpoints");
    std::fs::create_dir_all(&hub).unwrap();
    std::fs::copy(&src, hub.join("hubbed.safetensors")).unwrap();
    let before = hits.load(Ordering::SeqCst);
    let p = cached_path(&format!("http://127.0.0.1:{port}/m/hubbed.safetensors")).unwrap();
    assert_eq!(p, hub.join("hubbed.safetensors"));
    assert_eq!(hits.load(Ordering::SeqCst), before);

    // Through the model: MODEL.WEIGHTS as a URL loads like a path.
    let mut cfg = candletron::config::Config::default();
    cfg.merge_from_list(&[
        "MODEL.META_ARCHITECTURE",
        "Classifier",
        "MODEL.WEIGHTS",
        &url,
    ])
    .unwrap();
    let (_, report) = candletron::modeling::build_model(&cfg, 0).unwrap();
    let report = report.expect("weights were loaded");
    assert_eq!(
        report.unexpected,
        vec!["layer.weight".to_string()],
        "{report:?}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
