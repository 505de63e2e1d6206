//! Training checkpoints: one safetensors file holding the model (parameters and norm
//! buffers under their own names), the optimizer state (`optimizer.*`) and, in the
//! header metadata, the iteration, the seed and (see [`TrainedWith`]) the config and
//! class names. Files are written to a temporary name and
//! renamed, then `last_checkpoint` (also atomic) points at the newest one, so a crash at
//! any moment leaves the previous checkpoint usable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{CheckpointError, TrainedWith};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

use super::train_state::TrainState;
use crate::modeling::Model;
use crate::solver::Optimizer;
use crate::utils::fs::write_atomic;

#[derive(Debug, Clone)]
pub struct Checkpointer {
    pub dir: PathBuf,
    trained_with: Option<TrainedWith>,
}

/// What a checkpoint restores besides the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// The last completed iteration (training resumes at `iteration + 1`).
    pub iteration: usize,
    pub seed: u64,
    /// Evaluation history and epoch sums (empty in checkpoints that predate it).
    pub state: TrainState,
}

impl Checkpointer {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            trained_with: None,
        }
    }

    /// Every checkpoint written from now on records the config and class names.
    pub fn with_trained_with(mut self, info: TrainedWith) -> Self {
        self.trained_with = Some(info);
        self
    }

    /// Writes `{name}.safetensors` and points `last_checkpoint` at it.
    pub fn save(
        &self,
        name: &str,
        model: &Model,
        optimizer: Option<&Optimizer>,
        meta: &CheckpointMeta,
    ) -> Result<PathBuf> {
        self.write(name, model, optimizer, meta, &[], true)
    }

    /// Writes `model_best.safetensors`: the weights, the iteration and the metric, no
    /// optimizer state. `last_checkpoint` keeps naming the newest training checkpoint,
    /// so `--resume` never goes back to the best iteration (which Detectron2's does).
    pub fn save_best(
        &self,
        model: &Model,
        meta: &CheckpointMeta,
        metric: (&str, f64),
    ) -> Result<PathBuf> {
        let extra = [
            ("best_metric".to_string(), metric.0.to_string()),
            ("best_value".to_string(), metric.1.to_string()),
        ];
        self.write("model_best", model, None, meta, &extra, false)
    }

    fn write(
        &self,
        name: &str,
        model: &Model,
        optimizer: Option<&Optimizer>,
        meta: &CheckpointMeta,
        extra: &[(String, String)],
        point: bool,
    ) -> Result<PathBuf> {
        let file = format!("{name}.safetensors");
        let path = self.dir.join(&file);
        // Data-parallel ranks hold the same model: rank 0 alone writes it.
        if !crate::distributed::is_main_process() {
            return Ok(path);
        }
        let mut tensors: Vec<(String, Tensor)> = model
            .params
            .vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<candle_core::Result<_>>()?;
        if let Some(o) = optimizer {
            for (n, t) in o.state_tensors()? {
                tensors.push((n, t.to_device(&Device::Cpu)?));
            }
        }
        let mut metadata: HashMap<String, String> = [
            ("iteration".to_string(), meta.iteration.to_string()),
            ("seed".to_string(), meta.seed.to_string()),
            ("format".to_string(), "candletron-checkpoint-1".to_string()),
            ("train_state".to_string(), meta.state.to_json()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
        if let Some(info) = &self.trained_with {
            metadata.extend(info.to_metadata());
        }
        let map: std::collections::BTreeMap<&str, &Tensor> =
            tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let bytes = safetensors::serialize(map, Some(metadata))
            .map_err(|e| Error::run(format!("cannot serialise the checkpoint: {e}")))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("cannot create", &self.dir, e))?;
        write_atomic(&path, &bytes).map_err(|e| Error::io("cannot write", &path, e))?;
        if !point {
            return Ok(path);
        }
        let pointer = self.dir.join("last_checkpoint");
        write_atomic(&pointer, file.as_bytes())
            .map_err(|e| Error::io("cannot write", &pointer, e))?;
        Ok(path)
    }

    /// The periodic/interrupt checkpoint after iteration `iteration`: `model_{iteration:07}`.
    pub fn save_iteration(
        &self,
        meta: &CheckpointMeta,
        model: &Model,
        optimizer: &Optimizer,
    ) -> Result<PathBuf> {
        let iteration = meta.iteration;
        self.save(
            &format!("model_{iteration:07}"),
            model,
            Some(optimizer),
            meta,
        )
    }

    /// The file `last_checkpoint` names, if any.
    pub fn last_checkpoint(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.dir.join("last_checkpoint")).ok()?;
        let p = self.dir.join(name.trim());
        p.is_file().then_some(p)
    }

    /// `model_*.safetensors` in the folder with their iteration from the name
    /// (`model_final` last of all), newest first.
    fn checkpoints(&self) -> Vec<(usize, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_prefix("model_")?.strip_suffix(".safetensors")?;
                let iter = if stem == "final" {
                    usize::MAX
                } else {
                    stem.parse().ok()?
                };
                Some((iter, e.path()))
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found
    }

    /// What `--resume` tries, in order: the file `last_checkpoint` names, then every
    /// `model_*.safetensors`, newest first. A missing or truncated newest file (a crash
    /// while copying, a disk that filled up) then costs one checkpoint period, not the run.
    pub fn resume_candidates(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.last_checkpoint().into_iter().collect();
        for (_, p) in self.checkpoints() {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Deletes periodic checkpoints beyond the newest `keep` (`model_final` and the file
    /// `last_checkpoint` names always stay); `keep` 0 keeps all. Returns what it deleted.
    pub fn prune(&self, keep: usize) -> Result<Vec<PathBuf>> {
        if keep == 0 || !crate::distributed::is_main_process() {
            return Ok(Vec::new());
        }
        let last = self.last_checkpoint();
        let mut removed = Vec::new();
        let periodic = self
            .checkpoints()
            .into_iter()
            .filter(|(iter, _)| *iter != usize::MAX);
        for (_, p) in periodic.skip(keep) {
            if Some(&p) == last.as_ref() {
                continue;
            }
            std::fs::remove_file(&p).map_err(|e| Error::io("cannot delete", &p, e))?;
            removed.push(p);
        }
        Ok(removed)
    }

    /// Loads weights and optimizer state from a checkpoint written by [`Self::save`].
    pub fn load(
        path: &Path,
        model: &Model,
        optimizer: Option<&mut Optimizer>,
    ) -> Result<CheckpointMeta> {
        let err = |message: String| CheckpointError {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("not a safetensors checkpoint: {e}")))?;
        let md = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| -> Result<u64> {
            Ok(md
                .get(k)
                .ok_or_else(|| {
                    err(format!(
                        "no `{k}` in its metadata: not a training checkpoint"
                    ))
                })?
                .parse::<u64>()
                .map_err(|e| err(format!("bad `{k}`: {e}")))?)
        };
        let state = match md.get("train_state") {
            Some(text) => TrainState::from_json(text).map_err(err)?,
            None => TrainState::default(),
        };
        let meta = CheckpointMeta {
            iteration: get("iteration")? as usize,
            seed: get("seed")?,
            state,
        };
        let tensors =
            crate::checkpoint::read_checkpoint_bytes(&bytes).map_err(|e| err(e.message))?;
        let report = crate::checkpoint::load_state_dict(&model.params, &tensors)?;
        if !report.missing.is_empty() || !report.mismatched.is_empty() {
            return Err(err(format!("does not fit this model:\n{report}")).into());
        }
        if let Some(o) = optimizer {
            let map: HashMap<String, Tensor> = tensors
                .into_iter()
                .filter(|(k, _)| k.starts_with("optimizer."))
                .collect();
            o.load_state(&map)?;
        }
        Ok(meta)
    }
}
