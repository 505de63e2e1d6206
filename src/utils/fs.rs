//! File helpers.

use std::collections::HashMap;
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

/// What identifies an existing file however it is named: device and inode on unix (so
/// `./`, `..`, symbolic and hard links), the canonical path elsewhere.
#[derive(Debug, PartialEq, Eq, Hash)]
enum FileId {
    #[cfg(unix)]
    Inode(u64, u64),
    #[cfg(not(unix))]
    Path(PathBuf),
}

fn file_id(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId::Inode(m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        path.canonicalize().ok().map(FileId::Path)
    }
}

/// Whether `a` and `b` name the same existing file, however written.
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((file_id(a), file_id(b)), (Some(x), Some(y)) if x == y)
}

/// An error, before anything is written, when writing `output` would replace one of
/// `inputs`: a tool's output named like its input is almost always a slip, and the input
/// (a `.pth`, a trained checkpoint) may be the only copy.
pub fn check_replaces_no_input(output: &Path, inputs: &[&Path]) -> Result<(), String> {
    match inputs.iter().find(|i| same_file(output, i)) {
        Some(input) => Err(format!(
            "writing {} would replace the input {}: choose another output path",
            output.display(),
            input.display()
        )),
        None => Ok(()),
    }
}

/// Whether process `pid` is still running. Where that cannot be asked (outside unix) every
/// process counts as running, so nothing a live writer holds is ever deleted.
pub fn process_is_running(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // Signal 0 delivers nothing; it only checks that the process exists. EPERM means it
        // exists under another user.
        // SAFETY: kill with signal 0 has no effect on the target.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Deletes what writers that were killed left of `.{target}.tmpPID` in `dir` (files or
/// folders: a generated dataset is written as a temporary folder) and returns the paths.
/// Unlike [`remove_atomic_temporaries`] it is safe beside other writers of the same
/// target: a temporary whose process still runs is theirs, and stays.
pub fn remove_abandoned_temporaries(dir: &Path, target: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    let prefix = format!(".{target}{TEMP_MARK}");
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_is_running(pid) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed.push(entry.path());
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

/// `path` below `root`, or its file name when `root` is the file itself or does not hold
/// it: the name an input goes by in outputs (a drawing's path, a COCO `image_id`).
pub fn relative_to(path: &Path, root: &Path) -> PathBuf {
    match path.strip_prefix(root) {
        Ok(r) if !r.as_os_str().is_empty() => r.to_path_buf(),
        _ => PathBuf::from(path.file_name().unwrap_or_default()),
    }
}

/// One output file per input image: `output` joined with the input's path under
/// `input_root`, extension `ext`. So `A/x.png` and `B/x.png` stay apart, and `x.jpg` beside
/// `x.png` keeps its extension in its name (`x.jpg.png`) instead of one replacing the
/// other. An output that would replace an input (`output` is the input folder) is an error,
/// returned before the caller writes anything.
pub fn mirrored_outputs(
    inputs: &[PathBuf],
    input_root: &Path,
    output: &Path,
    ext: &str,
) -> Result<Vec<PathBuf>, String> {
    let relative = |p: &PathBuf| relative_to(p, input_root);
    let plain: Vec<PathBuf> = inputs
        .iter()
        .map(|p| output.join(relative(p)).with_extension(ext))
        .collect();
    let mut uses: HashMap<&PathBuf, usize> = HashMap::new();
    for o in &plain {
        *uses.entry(o).or_default() += 1;
    }
    let outputs: Vec<PathBuf> = inputs
        .iter()
        .zip(&plain)
        .map(|(p, o)| {
            if uses[o] > 1 && p.extension().and_then(|e| e.to_str()) != Some(ext) {
                let mut name = output.join(relative(p)).into_os_string();
                name.push(".");
                name.push(ext);
                PathBuf::from(name)
            } else {
                o.clone()
            }
        })
        .collect();
    let mut first: HashMap<&PathBuf, &PathBuf> = HashMap::new();
    for (p, o) in inputs.iter().zip(&outputs) {
        if let Some(other) = first.insert(o, p) {
            return Err(format!(
                "{} and {} would both be written to {}",
                other.display(),
                p.display(),
                o.display()
            ));
        }
    }
    // Only an existing file can be an input; file identities see through `./`, links and
    // case-insensitive file systems.
    let ids: HashMap<FileId, &PathBuf> = inputs
        .iter()
        .filter_map(|p| Some((file_id(p)?, p)))
        .collect();
    for o in &outputs {
        if let Some(input) = file_id(o).and_then(|id| ids.get(&id)) {
            return Err(format!(
                "writing {} would replace the input image {}: choose an output folder apart \
                 from the inputs",
                o.display(),
                input.display()
            ));
        }
    }
    Ok(outputs)
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

    #[test]
    fn abandoned_temporaries_go_and_those_of_running_writers_stay() {
        let dir = std::env::temp_dir().join(format!("candletron-abandoned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A finished (and reaped) child's process id belongs to no running process.
        let mut done = std::process::Command::new("true").spawn().unwrap();
        done.wait().unwrap();
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let killed = dir.join(format!(".data.tmp{}", done.id()));
        std::fs::create_dir_all(killed.join("images")).unwrap();
        std::fs::write(killed.join("images/0.png"), b"x").unwrap();
        let live = dir.join(format!(".data.tmp{}", running.id()));
        std::fs::create_dir_all(&live).unwrap();
        let own = dir.join(format!(".data.tmp{}", std::process::id()));
        std::fs::write(&own, b"x").unwrap();
        let other_target = dir.join(format!(".other.tmp{}", done.id()));
        std::fs::write(&other_target, b"x").unwrap();
        assert!(process_is_running(running.id()) && !process_is_running(done.id()));

        let removed = remove_abandoned_temporaries(&dir, "data").unwrap();
        running.kill().unwrap();
        running.wait().unwrap();
        assert_eq!(removed, vec![killed.clone()]);
        assert!(!killed.exists() && live.exists() && own.exists() && other_target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_output_that_is_an_input_by_any_name_is_refused() {
        let dir = std::env::temp_dir().join(format!("candletron-same-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let input = dir.join("w.pth");
        std::fs::write(&input, b"weights").unwrap();
        let other = dir.join("other.pth");
        std::fs::write(&other, b"x").unwrap();
        for name in [input.clone(), dir.join("sub/../w.pth"), dir.join("./w.pth")] {
            let e = check_replaces_no_input(&name, &[&other, &input]).unwrap_err();
            assert!(e.contains("would replace the input"), "{e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&input, dir.join("link.pth")).unwrap();
            std::fs::hard_link(&input, dir.join("hard.pth")).unwrap();
            assert!(check_replaces_no_input(&dir.join("link.pth"), &[&input]).is_err());
            assert!(check_replaces_no_input(&dir.join("hard.pth"), &[&input]).is_err());
        }
        // A new file, or another existing one (replacing an earlier output is allowed).
        assert!(check_replaces_no_input(&dir.join("w.safetensors"), &[&input]).is_ok());
        assert!(check_replaces_no_input(&other, &[&input]).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mirrored_outputs_keep_every_input_apart_and_never_replace_one() {
        let root = std::env::temp_dir().join(format!("candletron-mirror-{}", std::process::id()));
        let input = root.join("in");
        std::fs::create_dir_all(input.join("A")).unwrap();
        std::fs::create_dir_all(input.join("B")).unwrap();
        let inputs: Vec<PathBuf> = ["A/x.png", "B/x.png", "A/y.jpg", "A/y.png", "B/z.jpeg"]
            .iter()
            .map(|r| input.join(r))
            .collect();
        for p in &inputs {
            std::fs::write(p, b"").unwrap();
        }
        let out = root.join("out");
        let got = mirrored_outputs(&inputs, &input, &out, "png").unwrap();
        let want: Vec<PathBuf> = ["A/x.png", "B/x.png", "A/y.jpg.png", "A/y.png", "B/z.png"]
            .iter()
            .map(|r| out.join(r))
            .collect();
        assert_eq!(got, want);
        // A single file as the input: its own name.
        let one = mirrored_outputs(&inputs[2..3], &inputs[2], &out, "png").unwrap();
        assert_eq!(one, vec![out.join("y.png")]);
        // The input folder as the output folder: the PNGs would be replaced.
        let e = mirrored_outputs(&inputs, &input, &input, "png").unwrap_err();
        assert!(e.contains("would replace the input image"), "{e}");
        let via_dot = input.join("A").join("..");
        let e = mirrored_outputs(&inputs, &input, &via_dot, "png").unwrap_err();
        assert!(e.contains("would replace the input image"), "{e}");
        // A JPEG may be drawn beside itself.
        let jpeg = mirrored_outputs(&inputs[4..], &input, &input, "png").unwrap();
        assert_eq!(jpeg, vec![input.join("B/z.png")]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
