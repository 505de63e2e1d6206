//! File helpers.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Between a temporary file's target name and the writer's process id.
const TEMP_MARK: &str = ".tmp";

/// Whether `name` is a temporary file of [`write_atomic`] (`.NAME.tmpPID`).
pub fn is_atomic_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(TEMP_MARK).is_some_and(|(target, pid)| {
            target.len() > 1 && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Deletes the temporary files that a killed [`write_atomic`] left in `dir` (their
/// targets are intact: the rename never happened) and returns their paths. Only for
/// folders one process writes at a time, such as a run's output folder.
pub fn remove_atomic_temporaries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_atomic_temporary(&name) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash or Ctrl-C never leaves a half-written file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}{TEMP_MARK}{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `p` names an image the tools read (by extension: .jpg, .jpeg, .png).
pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// `path` itself when it is a file, else the image files under it at any depth, sorted.
pub fn image_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} does not exist", path.display()),
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image_file(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_temporaries_are_recognised_by_name() {
        assert!(is_atomic_temporary(".model_0000019.safetensors.tmp4242"));
        assert!(is_atomic_temporary(".last_checkpoint.tmp1"));
        assert!(!is_atomic_temporary("model_0000019.safetensors"));
        assert!(!is_atomic_temporary(".hidden"));
        assert!(!is_atomic_temporary(".x.tmp"));
        assert!(!is_atomic_temporary(".x.tmp12a"));
    }
}
