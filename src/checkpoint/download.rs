//! Checkpoints named by URL, as Detectron2's `MODEL.WEIGHTS` takes them: fetched once
//! into a local cache, then read like any file.
//!
//! The cache is `$CANDLETRON_CACHE/checkpoints/` (default `$XDG_CACHE_HOME/candletron`,
//! else `~/.cache/candletron`). A file that torch.hub already downloaded
//! (`$TORCH_HOME/hub/checkpoints/`, default `~/.cache/torch/hub/checkpoints/`) is reused
//! rather than fetched again. When the file name carries torchvision's hash prefix
//! (`mobilenet_v2-b0353104.pth`: the first hex digits of the file's SHA-256), the
//! download is checked against it. The file is written under a temporary name and
//! renamed once complete and checked, so a cut download never looks like a checkpoint.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::CheckpointError;

/// Whether `spec` names a remote checkpoint rather than a local path.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("https://") || spec.starts_with("http://")
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn xdg_cache() -> Option<PathBuf> {
    env_dir("XDG_CACHE_HOME").or_else(|| env_dir("HOME").map(|h| h.join(".cache")))
}

/// Where downloaded checkpoints go.
pub fn cache_dir() -> Option<PathBuf> {
    env_dir("CANDLETRON_CACHE")
        .or_else(|| xdg_cache().map(|c| c.join("candletron")))
        .map(|d| d.join("checkpoints"))
}

/// torch.hub's checkpoint folder, whose files are reused.
fn torch_hub_dir() -> Option<PathBuf> {
    env_dir("TORCH_HOME")
        .or_else(|| xdg_cache().map(|c| c.join("torch")))
        .map(|d| d.join("hub").join("checkpoints"))
}

/// The hex digits after the first `-` that are followed by a `.` (torch.hub's
/// `-([a-f0-9]*)\.`), if there are any.
pub fn hash_prefix(file_name: &str) -> Option<&str> {
    let mut rest = file_name;
    while let Some(i) = rest.find('-') {
        let tail = &rest[i + 1..];
        let n = tail
            .bytes()
            .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .count();
        if tail[n..].starts_with('.') {
            return (n > 0).then_some(&tail[..n]);
        }
        rest = tail;
    }
    None
}

/// The last path segment of `url`, without query or fragment.
fn file_name(url: &str) -> Result<&str, String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." || path.ends_with("://") {
        return Err(format!("{url}: the URL does not end in a file name"));
    }
    Ok(name)
}

/// The local copy of `url`: the cached file if there is one, else downloaded now.
pub fn cached_path(url: &str) -> Result<PathBuf, CheckpointError> {
    cached(url).map_err(|message| CheckpointError {
        path: url.to_string(),
        message,
    })
}

fn cached(url: &str) -> Result<PathBuf, String> {
    let name = file_name(url)?;
    if let Some(hub) = torch_hub_dir() {
        let p = hub.join(name);
        if p.is_file() {
            tracing::info!("{url}: using torch.hub's copy {}", p.display());
            return Ok(p);
        }
    }
    let dir = cache_dir().ok_or_else(|| {
        format!("{url}: no cache folder (set CANDLETRON_CACHE, XDG_CACHE_HOME or HOME)")
    })?;
    let target = dir.join(name);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    tracing::info!("downloading {url} to {}", target.display());
    download(url, &target, hash_prefix(name)).map_err(|e| {
        format!(
            "{e}\nWithout network access, fetch the file elsewhere and put it at {}, or set MODEL.WEIGHTS to a local file",
            target.display()
        )
    })?;
    Ok(target)
}

/// Removes the temporary file unless the download completed.
struct Partial(PathBuf, bool);

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn download(url: &str, target: &Path, hash: Option<&str>) -> Result<(), String> {
    let response = ureq::get(url)
        .call()
        .map_err(|e| format!("cannot download {url}: {e}"))?;
    let expected: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = response.into_body().into_reader();
    let tmp = target.with_file_name(format!(
        ".{}.{}.partial",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download"),
        std::process::id()
    ));
    let mut guard = Partial(tmp.clone(), false);
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("cannot download {url}: {e} after {total} bytes"))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        total += n as u64;
    }
    if let Some(len) = expected {
        if len != total {
            return Err(format!("cannot download {url}: got {total} of {len} bytes"));
        }
    }
    let digest: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(prefix) = hash {
        if !digest.starts_with(prefix) {
            return Err(format!(
                "{url}: the download's SHA-256 is {digest}, which does not start with the file name's hash {prefix} (corrupt or replaced file); nothing was kept"
            ));
        }
    }
    file.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, target)
        .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), target.display()))?;
    guard.1 = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_prefix_follows_torch_hub() {
        assert_eq!(hash_prefix("mobilenet_v2-b0353104.pth"), Some("b0353104"));
        assert_eq!(hash_prefix("resnet50-0676ba61.pth"), Some("0676ba61"));
        assert_eq!(
            hash_prefix("ssdlite320_mobilenet_v3_large_coco-a79551df.pth"),
            Some("a79551df")
        );
        // The first `-` is not followed by hex digits and a dot: the next one is.
        assert_eq!(hash_prefix("mobilenet-v2-b0353104.pth"), Some("b0353104"));
        assert_eq!(hash_prefix("model_final.pth"), None);
        assert_eq!(hash_prefix("model-final.pth"), None);
        assert_eq!(hash_prefix("model-.pth"), None);
    }

    #[test]
    fn file_names_of_urls() {
        assert_eq!(
            file_name("https://download.pytorch.org/models/mobilenet_v2-b0353104.pth").unwrap(),
            "mobilenet_v2-b0353104.pth"
        );
        assert_eq!(
            file_name("https://h/x/w.safetensors?dl=1#a").unwrap(),
            "w.safetensors"
        );
        assert!(file_name("https://h/x/").is_err());
        assert!(file_name("https://").is_err());
    }
}
