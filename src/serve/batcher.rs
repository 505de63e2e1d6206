//! Dynamic batching. Requests are admitted up to a fixed count (the queue: everything
//! after that is answered 503 at once, so memory stays bounded), prepared on their own
//! threads, and handed to one model thread. That thread takes the oldest waiting request,
//! gathers more until `max_batch` or until the oldest has waited `max_wait`, and runs
//! those of one input size as one model call: images of one size batch without padding,
//! so a batched answer equals the answer to the request alone.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;
use crate::engine::{Predicted, Predictor};
use crate::structures::ModelInput;

/// How requests are grouped and how many may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingConfig {
    /// Most images per model call; 1 turns batching off.
    pub max_batch: usize,
    /// Longest the oldest waiting request waits for others to join its batch.
    pub max_wait: Duration,
    /// Most requests admitted at once (being read, prepared, waiting or computed).
    pub queue: usize,
}

/// A request admitted to the queue; dropping it gives the place back.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a request got no prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The server is stopping and takes no more work.
    ShuttingDown,
    /// The model failed on this request's batch.
    Model(String),
}

struct Job {
    input: ModelInput,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Predicted, BatchError>>,
    /// Held until the answer is computed: a request whose client went away still
    /// occupies its place while its image waits in the channel.
    admission: Admission,
}

pub struct Batcher {
    sender: Mutex<Option<SyncSender<Job>>>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    thread: Mutex<Option<JoinHandle<()>>>,
    config: BatchingConfig,
}

impl Batcher {
    /// Starts the model thread.
    pub fn start(
        predictor: Arc<Predictor>,
        config: BatchingConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        assert!(config.max_batch >= 1 && config.queue >= 1);
        // Every job holds an admission, so the channel never holds more than `queue`.
        let (sender, receiver) = sync_channel(config.queue);
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("model".into())
            .spawn(move || model_loop(&predictor, receiver, config, &thread_metrics))?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            permits: Arc::new(Semaphore::new(config.queue)),
            metrics,
            thread: Mutex::new(Some(thread)),
            config,
        })
    }

    pub fn config(&self) -> BatchingConfig {
        self.config
    }

    /// A place in the queue, or `None` when it is full.
    pub fn admit(&self) -> Option<Admission> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Admission {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    /// Queues a prepared image and waits for its prediction.
    pub async fn predict(
        &self,
        input: ModelInput,
        admission: Admission,
    ) -> Result<Predicted, BatchError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            enqueued: Instant::now(),
            reply,
            admission,
        };
        {
            let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
            let Some(sender) = sender.as_ref() else {
                return Err(BatchError::ShuttingDown);
            };
            self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
            // Never full: admissions bound the jobs in flight to the channel's capacity.
            if sender.try_send(job).is_err() {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                return Err(BatchError::ShuttingDown);
            }
        }
        answer.await.unwrap_or(Err(BatchError::ShuttingDown))
    }

    /// Takes no more jobs, lets the model thread answer those queued, and waits for it.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

/// The oldest waiting job and those that join it within its wait.
fn next_batch(receiver: &Receiver<Job>, config: BatchingConfig) -> Option<Vec<Job>> {
    let first = receiver.recv().ok()?;
    let deadline = first.enqueued + config.max_wait;
    let mut jobs = vec![first];
    while jobs.len() < config.max_batch {
        match receiver.try_recv() {
            Ok(job) => {
                jobs.push(job);
                continue;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match receiver.recv_timeout(deadline - now) {
            Ok(job) => jobs.push(job),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(jobs)
}

fn model_loop(
    predictor: &Predictor,
    receiver: Receiver<Job>,
    config: BatchingConfig,
    metrics: &Metrics,
) {
    while let Some(jobs) = next_batch(&receiver, config) {
        metrics.queue_depth.fetch_sub(jobs.len(), Ordering::Relaxed);
        // Groups of one input size, in arrival order.
        let mut groups: Vec<(Vec<usize>, Vec<Job>)> = Vec::new();
        for job in jobs {
            let dims = job.input.image.dims().to_vec();
            match groups.iter_mut().find(|(d, _)| *d == dims) {
                Some((_, g)) => g.push(job),
                None => groups.push((dims, vec![job])),
            }
        }
        for (_, group) in groups {
            let inputs: Vec<ModelInput> = group.iter().map(|j| j.input.clone()).collect();
            let start = Instant::now();
            // A panic in the model answers this batch with an error and keeps serving.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                predictor.predict_prepared(&inputs)
            }));
            metrics.record_batch(group.len(), start.elapsed().as_secs_f64());
            let answers: Vec<Result<Predicted, BatchError>> = match result {
                Ok(Ok(p)) if p.len() == group.len() => p.into_iter().map(Ok).collect(),
                Ok(Ok(p)) => vec![
                    Err(BatchError::Model(format!(
                        "{} predictions for {} images",
                        p.len(),
                        group.len()
                    )));
                    group.len()
                ],
                Ok(Err(e)) => {
                    tracing::error!("model call failed: {e}");
                    vec![Err(BatchError::Model(e.to_string())); group.len()]
                }
                Err(_) => {
                    tracing::error!("the model panicked; the batch is answered with an error");
                    vec![Err(BatchError::Model("the model panicked".into())); group.len()]
                }
            };
            for (job, answer) in group.into_iter().zip(answers) {
                // The place is given back before the answer leaves: a client that sends
                // its next request on receiving this answer finds the place free.
                let Job {
                    reply, admission, ..
                } = job;
                drop(admission);
                // The client may have gone away; its answer is then dropped.
                let _ = reply.send(answer);
            }
        }
    }
}
