//! The `CustomOp` boilerplate of the float-generic CPU kernels, written once.
//!
//! Candle's `CustomOp1/2/3` traits want a name and a `cpu_fwd` over untyped storage in
//! every op; the kernels here are generic over `f32`/`f64`. [`custom_op2!`] and its
//! siblings write the trait impl: `name`, and a `cpu_fwd` that calls the kernel for the
//! input's dtype with the op and each input's `(storage, layout)`. Whatever else the op
//! implements (its backward, a CUDA forward) goes in the braces after the kernel.

/// `$f::<f32>(args)` or `$f::<f64>(args)` by `$dtype`; any other dtype is an error
/// naming `$op`.
macro_rules! float_dispatch {
    ($op:expr, $dtype:expr, $f:ident, $($args:expr),* $(,)?) => {
        match $dtype {
            candle_core::DType::F32 => $f::<f32>($($args),*),
            candle_core::DType::F64 => $f::<f64>($($args),*),
            other => candle_core::bail!("{}: {other:?} is not supported on CPU", $op),
        }
    };
}

/// `impl CustomOp1 for $op` whose CPU forward is `$kernel::<T>(self, (storage, layout))`.
macro_rules! custom_op1 {
    ($op:ty, $name:literal, $kernel:ident $(, { $($rest:tt)* })?) => {
        impl candle_core::CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                a: &candle_core::CpuStorage,
                al: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                use candle_core::backend::BackendStorage;
                float_dispatch!($name, a.dtype(), $kernel, self, (a, al))
            }

            $($($rest)*)?
        }
    };
}

/// `impl CustomOp2 for $op` whose CPU forward is `$kernel::<T>(self, (a, al), (b, bl))`,
/// typed by the first input.
macro_rules! custom_op2 {
    ($op:ty, $name:literal, $kernel:ident $(, { $($rest:tt)* })?) => {
        impl candle_core::CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                a: &candle_core::CpuStorage,
                al: &candle_core::Layout,
                b: &candle_core::CpuStorage,
                bl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                use candle_core::backend::BackendStorage;
                float_dispatch!($name, a.dtype(), $kernel, self, (a, al), (b, bl))
            }

            $($($rest)*)?
        }
    };
}

/// `impl CustomOp3 for $op` whose CPU forward is
/// `$kernel::<T>(self, (a, al), (b, bl), (c, cl))`, typed by the first input.
macro_rules! custom_op3 {
    ($op:ty, $name:literal, $kernel:ident $(, { $($rest:tt)* })?) => {
        impl candle_core::CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                a: &candle_core::CpuStorage,
                al: &candle_core::Layout,
                b: &candle_core::CpuStorage,
                bl: &candle_core::Layout,
                c: &candle_core::CpuStorage,
                cl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                use candle_core::backend::BackendStorage;
                float_dispatch!($name, a.dtype(), $kernel, self, (a, al), (b, bl), (c, cl))
            }

            $($($rest)*)?
        }
    };
}

/// A kernel's input: its storage and layout.
pub(crate) type Input<'a> = (&'a candle_core::CpuStorage, &'a candle_core::Layout);

/// A convolution whose f32 CPU forward can finish each output block with
/// `act(block + bias[channel])` while the block is still in cache: the inference path's
/// conv + bias + activation in one pass over memory. [`bias_act_op!`] turns it into a
/// Candle op of (x, weight, bias).
pub(crate) trait ConvEpilogue: Send + Sync {
    const NAME: &'static str;
    fn activation(&self) -> super::activation::Activation;
    /// The call's sizes, checked against the weight.
    fn dims(
        &self,
        x: &candle_core::Shape,
        w: &candle_core::Shape,
    ) -> candle_core::Result<super::geometry::ConvDims>;
    /// The convolution with `epilogue(output channel, block)` run on every finished block.
    fn forward_with(
        &self,
        d: &super::geometry::ConvDims,
        x: &[f32],
        w: &[f32],
        epilogue: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Vec<f32>;
}

/// `impl CustomOp3 for $op` (x, weight, bias) over its [`ConvEpilogue`]: f32 on CPU, no
/// gradient.
macro_rules! bias_act_op {
    ($op:ty) => {
        impl candle_core::CustomOp3 for $op {
            fn name(&self) -> &'static str {
                <$op as $crate::ops::custom_op::ConvEpilogue>::NAME
            }

            fn cpu_fwd(
                &self,
                xs: &candle_core::CpuStorage,
                xl: &candle_core::Layout,
                ws: &candle_core::CpuStorage,
                wl: &candle_core::Layout,
                bs: &candle_core::CpuStorage,
                bl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                use $crate::ops::custom_op::ConvEpilogue;
                let name = <$op as ConvEpilogue>::NAME;
                let d = self.dims(xl.shape(), wl.shape())?;
                let slice = |s, l| $crate::ops::parallel::cpu_slice::<f32>(s, l, name);
                let (x, w, b) = (slice(xs, xl)?, slice(ws, wl)?, slice(bs, bl)?);
                if b.len() != d.o {
                    candle_core::bail!("{name}: {} biases for {} output channels", b.len(), d.o);
                }
                let act = self.activation();
                let out = self.forward_with(&d, x, w, |ch, row| {
                    $crate::ops::activation::bias_act_in_place(act, row, b[ch])
                });
                Ok((
                    candle_core::CpuStorage::F32(out),
                    candle_core::Shape::from((d.n, d.o, d.ho, d.wo)),
                ))
            }
        }
    };
}
