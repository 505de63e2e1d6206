//! The activations a config can choose.

use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    ReLU,
    ReLU6,
    /// x * tanh(softplus(x)): smooth, which some light detectors train better with.
    Mish,
    Identity,
}

impl Activation {
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "ReLU" | "relu" => Ok(Self::ReLU),
            "ReLU6" | "relu6" => Ok(Self::ReLU6),
            "Mish" | "mish" => Ok(Self::Mish),
            "Identity" | "none" | "" => Ok(Self::Identity),
            other => Err(format!(
                "unknown activation `{other}`; expected one of ReLU, ReLU6, Mish, Identity"
            )),
        }
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::ReLU => x.relu(),
            Self::ReLU6 => super::fused::relu6(x),
            Self::Mish => {
                // softplus(x) = max(x, 0) + log(1 + exp(-|x|)), stable for large |x|.
                let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                x * softplus.tanh()?
            }
            Self::Identity => Ok(x.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
