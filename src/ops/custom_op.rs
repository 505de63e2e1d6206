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
