//! A batched loader with worker threads and bounded prefetch.
//!
//! The order of samples and every sample's augmentation are fixed by the seed alone:
//! the consumer hands out jobs (batch number, record indices, per-sample seeds) and
//! re-orders finished batches, so any number of workers gives the same batches.
//! A missing or corrupt image is reported once, counted, and replaced (training: by a
//! record drawn from the sample's own seed; evaluation: dropped from its batch), so a bad
//! file never stops a run. An annotation problem does stop it, earlier, in the catalog.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};

use super::catalog::{DataError, DatasetRecord};
use super::mapper::{DatasetMapper, Sample};
use super::rng::{mix_seed, SampleRng};
use super::samplers::{EpochSampler, SamplerSpec};
use crate::structures::ModelInput;

/// Replacement attempts for a training sample whose image cannot be read.
const MAX_REPLACEMENTS: usize = 16;

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub num_workers: usize,
    /// Batches in flight ahead of the consumer (at least 1).
    pub prefetch: usize,
    pub seed: u64,
    /// Training: an endless stream of reshuffled epochs. Evaluation: each record once, in order.
    pub train: bool,
    /// Training: samples of the stream already consumed (a resumed run starts at
    /// `iteration * batch_size` and sees exactly the batches it would have seen).
    pub start: usize,
    /// Training: how each epoch draws the records.
    pub sampler: SamplerSpec,
    /// The part of the stream this process reads in data-parallel training.
    pub shard: Shard,
}

/// Rank `rank` of `world` reads its share of the one deterministic stream: in training,
/// the `rank`-th of `world` equal slices of every global batch of `batch_size` (so the
/// global batches are those a single process sees, whatever the world size); in
/// evaluation, every `world`-th record from `rank` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { rank: 0, world: 1 }
    }
}

impl Shard {
    /// This process's shard in the process group.
    pub fn of_process() -> Self {
        Self {
            rank: crate::distributed::rank(),
            world: crate::distributed::world_size(),
        }
    }
}

/// One batch: the model's inputs and where each image came from.
#[derive(Debug)]
pub struct ImageBatch {
    pub inputs: Vec<ModelInput>,
    pub samples: Vec<SampleInfo>,
}

/// Where a sample's image came from.
#[derive(Debug, Clone)]
pub struct SampleInfo {
    pub image_id: String,
    pub file_name: PathBuf,
    /// (width, height) of the image as stored.
    pub original_size: (u32, u32),
}

struct Job {
    number: usize,
    /// (record index, sample seed) for each slot of the batch.
    slots: Vec<(usize, u64)>,
}

type JobResult = (usize, Result<ImageBatch, DataError>);

struct Shared {
    records: Arc<Vec<DatasetRecord>>,
    mapper: DatasetMapper,
    opts: LoaderOptions,
    /// File -> error for every image that could not be read.
    failures: Mutex<BTreeMap<PathBuf, String>>,
}

pub struct DataLoader {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    results: Receiver<JobResult>,
    workers: Vec<JoinHandle<()>>,
    pending: HashMap<usize, Result<ImageBatch, DataError>>,
    next_job: usize,
    next_out: usize,
    /// Training stream position (samples handed out so far), the current epoch's order,
    /// its number and the position it starts at.
    position: usize,
    sampler: EpochSampler,
    order: Vec<usize>,
    epoch: usize,
    epoch_start: usize,
}

impl DataLoader {
    pub fn new(
        records: Arc<Vec<DatasetRecord>>,
        mapper: DatasetMapper,
        opts: LoaderOptions,
    ) -> Result<Self, DataError> {
        if records.is_empty() {
            return Err(DataError::new("the dataset has no images"));
        }
        if opts.batch_size == 0 {
            return Err(DataError::new("batch size must be at least 1"));
        }
        let Shard { rank, world } = opts.shard;
        if world == 0 || rank >= world {
            return Err(DataError::new(format!("rank {rank} of a world of {world}")));
        }
        if opts.train && !opts.batch_size.is_multiple_of(world) {
            return Err(DataError::new(format!(
                "the global batch of {} images does not split into {world} equal shards",
                opts.batch_size
            )));
        }
        let sampler = if opts.train {
            EpochSampler::new(opts.sampler, &records)?
        } else {
            EpochSampler::new(SamplerSpec::Shuffle, &records)?
        };
        let order = sampler.epoch(opts.seed, 0);
        let shared = Arc::new(Shared {
            records,
            mapper,
            opts,
            failures: Mutex::new(BTreeMap::new()),
        });
        let (job_tx, job_rx) = channel::<Job>();
        let (res_tx, res_rx) = channel::<JobResult>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..shared.opts.num_workers)
            .map(|i| {
                let (shared, job_rx, res_tx) = (shared.clone(), job_rx.clone(), res_tx.clone());
                std::thread::Builder::new()
                    .name(format!("loader-{i}"))
                    .spawn(move || loop {
                        let job = match job_rx.lock().map(|rx| rx.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return,
                        };
                        let out = shared.run(&job);
                        if res_tx.send((job.number, out)).is_err() {
                            return;
                        }
                    })
                    .map_err(|e| DataError::new(format!("cannot start a loader thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut loader = Self {
            shared,
            jobs: Some(job_tx),
            results: res_rx,
            workers,
            pending: HashMap::new(),
            next_job: 0,
            next_out: 0,
            position: 0,
            sampler,
            order,
            epoch: 0,
            epoch_start: 0,
        };
        if loader.shared.opts.train {
            loader.position = loader.shared.opts.start;
        }
        if loader.shared.opts.num_workers > 0 {
            for _ in 0..loader.shared.opts.prefetch.max(1) {
                loader.dispatch();
            }
        }
        Ok(loader)
    }

    /// Batches in one pass over the data (evaluation), or per epoch (training, rounded
    /// down; the mean epoch for repeat factors).
    pub fn batches_per_epoch(&self) -> usize {
        let b = self.shared.opts.batch_size;
        if self.shared.opts.train {
            (self.sampler.epoch_len() / b).max(1)
        } else {
            self.shared.records.len().div_ceil(b)
        }
    }

    /// Images that could not be read so far, with the reason.
    pub fn failures(&self) -> Vec<(PathBuf, String)> {
        self.shared
            .failures
            .lock()
            .map(|f| f.iter().map(|(p, e)| (p.clone(), e.clone())).collect())
            .unwrap_or_default()
    }

    fn next_slots(&mut self) -> Option<Vec<(usize, u64)>> {
        let opts = &self.shared.opts;
        let n = self.shared.records.len();
        let Shard { rank, world } = opts.shard;
        if !opts.train {
            // This rank's records are rank, rank + world, ...
            let local = (n + world - 1 - rank) / world;
            let start = self.next_job * opts.batch_size;
            if start >= local {
                return None;
            }
            let end = (start + opts.batch_size).min(local);
            return Some((start..end).map(|i| (rank + i * world, 0)).collect());
        }
        let mut slots = Vec::with_capacity(opts.batch_size);
        for _ in 0..opts.batch_size {
            // Epochs follow each other in the stream; each one's order comes from (seed,
            // epoch) only, so a resumed run replays the lengths up to its position.
            while self.position >= self.epoch_start + self.order.len() {
                self.epoch_start += self.order.len();
                self.epoch += 1;
                self.order = self.sampler.epoch(opts.seed, self.epoch);
            }
            slots.push((
                self.order[self.position - self.epoch_start],
                mix_seed(opts.seed ^ 0x5eed, self.position as u64),
            ));
            self.position += 1;
        }
        let per_rank = opts.batch_size / world;
        Some(
            slots
                .drain(rank * per_rank..(rank + 1) * per_rank)
                .collect(),
        )
    }

    fn dispatch(&mut self) -> Option<Job> {
        let slots = self.next_slots()?;
        let job = Job {
            number: self.next_job,
            slots,
        };
        self.next_job += 1;
        match &self.jobs {
            Some(tx) if !self.workers.is_empty() => {
                let _ = tx.send(job);
                None
            }
            _ => Some(job),
        }
    }
}

impl Iterator for DataLoader {
    type Item = Result<ImageBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.workers.is_empty() {
            let job = self.dispatch()?;
            self.next_out += 1;
            return Some(self.shared.run(&job));
        }
        // Keep `prefetch` jobs in flight.
        self.dispatch();
        if self.next_out >= self.next_job && !self.pending.contains_key(&self.next_out) {
            return None;
        }
        while !self.pending.contains_key(&self.next_out) {
            match self.results.recv() {
                Ok((k, r)) => {
                    self.pending.insert(k, r);
                }
                Err(_) => return Some(Err(DataError::new("a loader thread stopped unexpectedly"))),
            }
        }
        let out = self.pending.remove(&self.next_out);
        self.next_out += 1;
        out
    }
}

impl Drop for DataLoader {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Shared {
    fn note_failure(&self, rec: &DatasetRecord, e: &DataError) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !f.contains_key(&rec.file_name) {
            tracing::warn!("skipping an image: {e}");
            f.insert(rec.file_name.clone(), e.to_string());
        }
    }

    fn load(&self, index: usize, seed: u64) -> Result<Option<Sample>, DataError> {
        let n = self.records.len();
        let mut idx = index;
        for attempt in 0..=MAX_REPLACEMENTS {
            let rec = &self.records[idx];
            let mut rng = SampleRng::new(seed.wrapping_add(attempt as u64));
            match self.mapper.map(rec, &mut rng) {
                Ok(mut s) => {
                    s.seed = seed;
                    return Ok(Some(s));
                }
                Err(e) => {
                    self.note_failure(rec, &e);
                    if !self.opts.train {
                        return Ok(None);
                    }
                    idx = (mix_seed(seed, attempt as u64 + 1) % n as u64) as usize;
                }
            }
        }
        Err(DataError::new(format!(
            "{} images in a row could not be read (last: {}); see the warnings above",
            MAX_REPLACEMENTS + 1,
            self.records[idx].file_name.display()
        )))
    }

    fn run(&self, job: &Job) -> Result<ImageBatch, DataError> {
        let mut samples = Vec::with_capacity(job.slots.len());
        for &(i, seed) in &job.slots {
            if let Some(s) = self.load(i, seed)? {
                samples.push(s);
            }
        }
        collate(samples, self.opts.train)
    }
}

/// The batch as model inputs: each image as a (3, H, W) f32 tensor of 0..255 pixels on
/// CPU, built here in the worker thread; normalising and padding are the model's.
/// Evaluation inputs ask for detections in the original image's pixels.
pub fn collate(samples: Vec<Sample>, train: bool) -> Result<ImageBatch, DataError> {
    let mut inputs = Vec::with_capacity(samples.len());
    let mut infos = Vec::with_capacity(samples.len());
    for s in samples {
        let (w, h) = (s.image.width() as usize, s.image.height() as usize);
        let hwc = Tensor::from_vec(s.image.into_raw(), (h, w, 3), &Device::Cpu)
            .and_then(|t| t.permute((2, 0, 1))?.to_dtype(DType::F32))
            .map_err(|e| DataError::new(format!("cannot build the image tensor: {e}")))?;
        let mut input = ModelInput::new(hwc).with_instances(s.instances);
        if let Some(label) = s.label {
            input = input.with_class_label(label);
        }
        if train {
            input = input.with_seed(s.seed);
        } else {
            let (ow, oh) = s.original_size;
            input = input.with_output_size(oh as usize, ow as usize);
        }
        inputs.push(input);
        infos.push(SampleInfo {
            image_id: s.image_id,
            file_name: s.file_name,
            original_size: s.original_size,
        });
    }
    Ok(ImageBatch {
        inputs,
        samples: infos,
    })
}
