//! The activations a config can choose, and single-pass kernels for the hot ones.
//!
//! Candle's `clamp` is two broadcast binary ops; on MobileNetV2 at 224 px ReLU6 alone
//! cost more than the 1x1 convolutions it follows. The kernels here make one parallel
//! pass: ReLU6 with its backward for training, and bias + activation in one pass for the
//! inference path, where norms are folded into the convolutions.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::parallel::par_fill;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    ReLU,
    ReLU6,
    /// x * tanh(softplus(x)): smooth, which some light detectors train better with.
    Mish,
    Identity,
}

impl Activation {
    /// This activation as ONNX nodes after `x`: ReLU6 as `Clip(0, 6)`, Mish as
    /// `x * tanh(softplus(x))`, since opset 18's `Mish` is missing from many runtimes.
    pub fn export_onnx(&self, g: &mut crate::onnx::OnnxGraph, x: &str) -> String {
        match self {
            Self::Identity => x.to_string(),
            Self::ReLU => g.node("Relu", &[x], vec![]),
            Self::ReLU6 => {
                let (lo, hi) = (g.scalar("relu6_min", 0.0), g.scalar("relu6_max", 6.0));
                g.node("Clip", &[x, &lo, &hi], vec![])
            }
            Self::Mish => {
                let sp = g.node("Softplus", &[x], vec![]);
                let t = g.node("Tanh", &[&sp], vec![]);
                g.node("Mul", &[x, &t], vec![])
            }
        }
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::ReLU => x.relu(),
            Self::ReLU6 => relu6(x),
            Self::Mish => {
                // softplus(x) = max(x, 0) + log(1 + exp(-|x|)), stable for large |x|.
                let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                x * softplus.tanh()?
            }
            Self::Identity => Ok(x.clone()),
        }
    }
}

/// Chunk size for parallel element-wise passes: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: needs a contiguous input");
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: only f32 is supported"),
    }
}

fn mish(x: f32) -> f32 {
    let sp = x.max(0.0) + (-x.abs()).exp().ln_1p();
    x * sp.tanh()
}

/// ReLU as a compare-and-select: a NaN input stays NaN, as in PyTorch, where
/// `f32::max(NaN, 0.0)` gave 0 and so turned a broken input into plausible outputs.
#[inline(always)]
fn relu_select(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// ReLU6 as two compare-and-selects (see [`relu_select`]).
#[inline(always)]
fn relu6_select(v: f32) -> f32 {
    let v = relu_select(v);
    if v > 6.0 {
        6.0
    } else {
        v
    }
}

/// `act(x + bias)` over one plane, monomorphised per activation so the loop vectorises.
fn plane_bias_act(a: Activation, x: &[f32], bias: f32, o: &mut [std::mem::MaybeUninit<f32>]) {
    fn run(x: &[f32], o: &mut [std::mem::MaybeUninit<f32>], f: impl Fn(f32) -> f32) {
        for (o, x) in o.iter_mut().zip(x) {
            o.write(f(*x));
        }
    }
    match a {
        Activation::ReLU => run(x, o, |v| relu_select(v + bias)),
        Activation::ReLU6 => run(x, o, |v| relu6_select(v + bias)),
        Activation::Mish => run(x, o, |v| mish(v + bias)),
        Activation::Identity => run(x, o, |v| v + bias),
    }
}

/// `row = act(row + bias)` in place, for kernels that finish an output row in cache.
pub(crate) fn bias_act_in_place(a: Activation, row: &mut [f32], bias: f32) {
    fn run(row: &mut [f32], f: impl Fn(f32) -> f32) {
        for v in row.iter_mut() {
            *v = f(*v);
        }
    }
    match a {
        Activation::ReLU => run(row, |v| relu_select(v + bias)),
        Activation::ReLU6 => run(row, |v| relu6_select(v + bias)),
        Activation::Mish => run(row, |v| mish(v + bias)),
        Activation::Identity => run(row, |v| v + bias),
    }
}

struct Relu6;

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "relu6"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "relu6")?;
        let out = par_fill(x.len(), CHUNK, |i, o| {
            plane_bias_act(
                Activation::ReLU6,
                &x[i * CHUNK..(i * CHUNK + o.len())],
                0.0,
                o,
            )
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::activation_cuda::relu6(s, l)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &Relu6Grad)?))
    }
}

/// grad where 0 < x < 6, else 0 (PyTorch's hardtanh backward).
struct Relu6Grad;

impl CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "relu6-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "relu6-grad")?;
        let g = contiguous_f32(gs, gl, "relu6-grad")?;
        if x.len() != g.len() {
            candle_core::bail!("relu6-grad: {} inputs, {} gradients", x.len(), g.len());
        }
        let out = par_fill(x.len(), CHUNK, |i, o| {
            let at = i * CHUNK;
            let (x, g) = (&x[at..at + o.len()], &g[at..at + o.len()]);
            // A bit mask rather than a branch: LLVM kept `if` (and `&`) as a conditional
            // load, a scalar loop that dominated this pass.
            for ((o, x), g) in o.iter_mut().zip(x).zip(g) {
                let keep = ((*x > 0.0) & (*x < 6.0)) as u32;
                o.write(f32::from_bits(g.to_bits() & keep.wrapping_neg()));
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::activation_cuda::relu6_grad(xs, xl, gs, gl)
    }
}

/// Whether the one-pass ops run for `x`: on the CPU in f32, on CUDA in the kernels' dtypes.
fn one_pass(x: &Tensor) -> bool {
    match x.device() {
        candle_core::Device::Cpu => x.dtype() == candle_core::DType::F32,
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => super::activation_cuda::supports(x.dtype()),
        _ => false,
    }
}

/// ReLU6 in one pass, forward and backward (CPU f32, CUDA); `clamp` elsewhere.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if one_pass(x) {
        x.contiguous()?.apply_op1(Relu6)
    } else {
        x.clamp(0f32, 6f32)
    }
}

/// act(x + bias[c]) for NCHW `x`; inference only (no gradient).
struct BiasAct(Activation);

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "bias-act")?;
        let b = contiguous_f32(bs, bl, "bias-act")?;
        let (_, c, h, w) = xl.shape().dims4()?;
        if b.len() != c {
            candle_core::bail!("bias-act: {} biases for {c} channels", b.len());
        }
        let plane = h * w;
        let out = par_fill(x.len(), plane, |i, o| {
            plane_bias_act(self.0, &x[i * plane..(i + 1) * plane], b[i % c], o)
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::activation_cuda::bias_act(self.0, xs, xl, bs, bl)
    }
}

/// `activation(x + bias)` with `bias` per channel, in one pass (CPU f32, CUDA); no
/// gradient: the fused inference path only.
pub fn bias_act(x: &Tensor, bias: &Tensor, activation: Activation) -> Result<Tensor> {
    if one_pass(x) && x.rank() == 4 && bias.dtype() == x.dtype() {
        x.contiguous()?
            .apply_op2_no_bwd(&bias.contiguous()?, &BiasAct(activation))
    } else {
        activation.apply(&x.broadcast_add(&bias.reshape((1, (), 1, 1))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn relu6_forward_and_backward_match_clamp() {
        let x = Var::new(&[-2f32, 0.5, 3.0, 6.5, 5.9, 0.0], &Device::Cpu).unwrap();
        let y = relu6(x.as_tensor()).unwrap();
        assert_eq!(
            y.to_vec1::<f32>().unwrap(),
            vec![0.0, 0.5, 3.0, 6.0, 5.9, 0.0]
        );
        let g = (y * Tensor::new(&[1f32, 2., 3., 4., 5., 6.], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 2.0, 3.0, 0.0, 5.0, 0.0]
        );
    }

    #[test]
    fn relu_and_relu6_keep_nan() {
        let mut row = [f32::NAN, -1.0, 3.0, 9.0];
        bias_act_in_place(Activation::ReLU6, &mut row, 0.0);
        assert!(row[0].is_nan());
        assert_eq!(&row[1..], &[0.0, 3.0, 6.0]);
        let mut row = [f32::NAN, -1.0, 9.0];
        bias_act_in_place(Activation::ReLU, &mut row, 0.0);
        assert!(row[0].is_nan());
        assert_eq!(&row[1..], &[0.0, 9.0]);
    }

    #[test]
    fn bias_act_matches_stock_ops() {
        let x = Tensor::randn(0f32, 4.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, -1.0, 7.0], &Device::Cpu).unwrap();
        for a in [
            Activation::ReLU6,
            Activation::Mish,
            Activation::ReLU,
            Activation::Identity,
        ] {
            let want = a
                .apply(&x.broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap()).unwrap())
                .unwrap();
            let got = bias_act(&x, &b, a).unwrap();
            let d = crate::ops::max_abs_diff(&got, &want);
            assert!(d < 1e-5, "{a:?}: {d}");
        }
    }

    #[test]
    fn mish_matches_definition() {
        let xs = [-30.0f32, -2.0, -0.5, 0.0, 0.7, 3.0, 40.0];
        let t = Tensor::new(&xs, &Device::Cpu).unwrap();
        let y: Vec<f32> = Activation::Mish.apply(&t).unwrap().to_vec1().unwrap();
        for (x, y) in xs.iter().zip(y) {
            let x = *x as f64;
            let expect = x * (1.0 + x.exp()).ln().tanh();
            assert!(
                (y as f64 - expect).abs() < 1e-5,
                "mish({x}) = {y}, want {expect}"
            );
        }
    }

    #[test]
    fn relu6_clamps() {
        let t = Tensor::new(&[-1.0f32, 3.0, 9.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = Activation::ReLU6.apply(&t).unwrap().to_vec1().unwrap();
        assert_eq!(y, vec![0.0, 3.0, 6.0]);
    }
}
