//! WIDER FACE's submission layout: `DIR/EVENT/IMAGE.txt` holding the image name, the
//! number of detections, then one `x y w h score` line per detection.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::data::datasets::record::DataError;

use super::widerface::GroundTruth;

/// Parses one prediction file; errors name the file and line.
pub fn parse_prediction_file(text: &str, path: &Path) -> Result<Vec<[f64; 5]>, DataError> {
    let at = |line: usize, msg: String| format!("{}:{line}: {msg}", path.display());
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    lines
        .next()
        .ok_or_else(|| at(1, "empty file (expected the image name)".into()))?;
    let (ln, count) = lines
        .next()
        .ok_or_else(|| at(2, "missing the detection count".into()))?;
    let count: usize = count.trim().parse().map_err(|_| {
        at(
            ln + 1,
            format!("expected the detection count, found `{}`", count.trim()),
        )
    })?;
    // The count is untrusted: never reserve more than the text could hold.
    let mut dets = Vec::with_capacity(count.min(text.len() / 10 + 1));
    for (ln, line) in lines {
        let vals: Vec<&str> = line.split_whitespace().collect();
        if vals.len() != 5 {
            return Err(at(
                ln + 1,
                format!("expected `x y w h score`, found `{}`", line.trim()),
            )
            .into());
        }
        let mut d = [0f64; 5];
        for (slot, v) in d.iter_mut().zip(&vals) {
            *slot = v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| at(ln + 1, format!("`{v}` is not a finite number")))?;
        }
        dets.push(d);
    }
    if dets.len() != count {
        return Err(at(
            2,
            format!("the file says {count} detections but has {}", dets.len()),
        )
        .into());
    }
    Ok(dets)
}

/// Predictions of every ground-truth image; files that do not exist are listed in the
/// second value (they count as no detections).
#[allow(clippy::type_complexity)]
pub fn read_predictions(
    dir: &Path,
    gt: &GroundTruth,
) -> Result<(HashMap<(String, String), Vec<[f64; 5]>>, Vec<String>), DataError> {
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a folder"
        } else {
            "does not exist"
        };
        return Err(format!("prediction folder {} {what}", dir.display()).into());
    }
    let mut out = HashMap::with_capacity(gt.images.len());
    let mut missing = Vec::new();
    let mut negative = 0usize;
    for img in &gt.images {
        let path = dir.join(&img.event).join(format!("{}.txt", img.name));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let dets = parse_prediction_file(&text, &path)?;
                negative += dets.iter().filter(|d| d[2] < 0.0 || d[3] < 0.0).count();
                out.insert((img.event.clone(), img.name.clone()), dets);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(format!("{}/{}", img.event, img.name))
            }
            Err(e) => return Err(format!("{}: {e}", path.display()).into()),
        }
    }
    if negative > 0 {
        // The official evaluation keeps them (they match nothing); say so, since a
        // negative width usually means x2 was written where w belongs.
        tracing::warn!(
            "{negative} predictions in {} have a negative width or height (the format is \
             x y w h); they match no face",
            dir.display()
        );
    }
    Ok((out, missing))
}

/// Writes one image's detections (sorted by score, descending) in the submission layout.
pub fn write_prediction_file(
    dir: &Path,
    event: &str,
    name: &str,
    dets: &[[f64; 5]],
) -> std::io::Result<()> {
    let mut sorted = dets.to_vec();
    sorted.sort_by(|a, b| b[4].total_cmp(&a[4]));
    let mut text = format!("{name}\n{}\n", sorted.len());
    for d in &sorted {
        let _ = writeln!(
            text,
            "{:.1} {:.1} {:.1} {:.1} {:.6}",
            d[0], d[1], d[2], d[3], d[4]
        );
    }
    crate::utils::fs::write_atomic(
        &dir.join(event).join(format!("{name}.txt")),
        text.as_bytes(),
    )
}
