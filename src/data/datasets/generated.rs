//! The cache of generated datasets: `base/TAG/`, complete when its `SPEC` file holds the
//! tag. A dataset is generated into a temporary folder and renamed into place, so an
//! interrupted run never leaves a half-written dataset that looks complete, and two
//! processes generating the same one at once both end with it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::record::DataError;

/// `base/tag`, generated first by `generate` (which writes into the folder it is given,
/// `SPEC` last) when missing or incomplete. `what` names the dataset in the log.
pub fn cached_dataset(
    base: &Path,
    tag: &str,
    what: &str,
    generate: impl FnOnce(&Path) -> Result<(), DataError>,
) -> Result<PathBuf, DataError> {
    let dir = base.join(tag);
    let complete = |d: &Path| std::fs::read_to_string(d.join("SPEC")).is_ok_and(|t| t == tag);
    if complete(&dir) {
        return Ok(dir);
    }
    let tmp = base.join(format!(".{tag}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    tracing::info!("generating {what} into {}", dir.display());
    let t = Instant::now();
    generate(&tmp)?;
    if dir.exists() && !complete(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have finished the same dataset first.
        if !complete(&dir) {
            return Err(DataError::new(format!(
                "cannot move the generated dataset to {}: {e}",
                dir.display()
            )));
        }
    }
    tracing::info!("generated in {:.1} s", t.elapsed().as_secs_f64());
    Ok(dir)
}
