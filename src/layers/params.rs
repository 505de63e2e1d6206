//! The model's named parameters: a `VarBuilder` backend with seeded initialisation.
//!
//! Candle's CPU RNG cannot be seeded, yet `SEED` must make runs repeatable (and resumed
//! runs identical), so initial values are drawn here from a seeded host RNG. Names are
//! the PyTorch state-dict keys, which is what lets torchvision checkpoints load directly.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::{Init, VarBuilder};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};

#[derive(Default)]
struct Inner {
    order: Vec<String>,
    vars: HashMap<String, Var>,
}

pub struct ParamStore {
    inner: Mutex<Inner>,
    rng: Mutex<StdRng>,
}

/// Buffers that are state, not parameters: never optimised, never counted as parameters.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// A `VarBuilder` that creates (or returns) variables in this store.
    pub fn var_builder(
        self: &std::sync::Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(SharedStore(self.clone())), dtype, device.clone())
    }

    /// Every variable, in creation order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let inner = self.inner.lock().expect("param store poisoned");
        inner
            .order
            .iter()
            .map(|n| (n.clone(), inner.vars[n].clone()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.inner
            .lock()
            .expect("param store poisoned")
            .vars
            .get(name)
            .cloned()
    }

    /// Number of scalar parameters (buffers excluded), as PyTorch's `numel` sum counts them.
    pub fn num_parameters(&self) -> usize {
        self.vars()
            .iter()
            .filter(|(n, _)| !is_buffer(n))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    fn sample(&self, shape: &Shape, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let dims = shape.dims();
        let mut rng = self.rng.lock().expect("rng poisoned");
        let data: Vec<f32> = match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Randn { mean, stdev } => {
                let d = Normal::new(mean, stdev).map_err(candle_core::Error::wrap)?;
                (0..n).map(|_| d.sample(&mut *rng) as f32).collect()
            }
            Init::Uniform { lo, up } => {
                let d = Uniform::new(lo, up).map_err(candle_core::Error::wrap)?;
                (0..n).map(|_| d.sample(&mut *rng) as f32).collect()
            }
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let receptive: usize = dims.iter().skip(2).product();
                let fan = match fan {
                    FanInOut::FanIn => dims.get(1).copied().unwrap_or(1) * receptive,
                    FanInOut::FanOut => dims.first().copied().unwrap_or(1) * receptive,
                };
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => {
                        let d = Normal::new(0.0, std).map_err(candle_core::Error::wrap)?;
                        (0..n).map(|_| d.sample(&mut *rng) as f32).collect()
                    }
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        let d = Uniform::new(-b, b).map_err(candle_core::Error::wrap)?;
                        (0..n).map(|_| d.sample(&mut *rng) as f32).collect()
                    }
                }
            }
        };
        Tensor::from_vec(data, shape.clone(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }
}

struct SharedStore(std::sync::Arc<ParamStore>);

impl candle_nn::var_builder::SimpleBackend for SharedStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(var) = self.0.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "parameter {name} exists with shape {:?}, asked for {:?}",
                    var.shape(),
                    s
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let var = Var::from_tensor(&self.0.sample(&s, h, dtype, dev)?)?;
        let mut inner = self.0.inner.lock().expect("param store poisoned");
        inner.order.push(name.to_string());
        inner.vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.0.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_some()
    }
}
