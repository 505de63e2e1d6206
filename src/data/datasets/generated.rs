//! The cache of generated datasets: `base/TAG/`, complete when its `SPEC` file holds the
//! tag. A dataset is generated into a temporary folder and renamed into place, so an
//! interrupted run never leaves a half-written dataset that looks complete, and two
//! processes generating the same one at once both end with it. The next generation
//! deletes the temporary folders of killed runs.

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
    // A run killed while generating left its temporary folder (hundreds of MB); any
    // folder of a process that no longer runs is such a leftover.
    match crate::utils::fs::remove_abandoned_temporaries(base, tag) {
        Ok(removed) if !removed.is_empty() => tracing::info!(
            "removed {} unfinished dataset folder(s) of killed runs in {}",
            removed.len(),
            base.display()
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "cannot remove an unfinished dataset folder in {}: {e}",
            base.display()
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_generation_is_cleaned_up_and_a_complete_dataset_reused() {
        let base = std::env::temp_dir().join(format!("candletron-gen-{}", std::process::id()));
        let mut done = std::process::Command::new("true").spawn().unwrap();
        done.wait().unwrap();
        let killed = base.join(format!(".d1.tmp{}", done.id()));
        std::fs::create_dir_all(killed.join("images")).unwrap();
        let write = |d: &Path| -> Result<(), DataError> {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("SPEC"), "d1").unwrap();
            Ok(())
        };
        let dir = cached_dataset(&base, "d1", "test data", write).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("SPEC")).unwrap(), "d1");
        assert!(!killed.exists());
        // Complete: not generated again, and a later leftover still goes.
        std::fs::create_dir_all(&killed).unwrap();
        let again = cached_dataset(&base, "d1", "test data", |_| panic!("regenerated")).unwrap();
        assert_eq!(again, dir);
        assert!(!killed.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
