//! What reading a checkpoint may cost. A checkpoint is outside input: its tensor
//! descriptions, names and compressed entries are claims, and a file of a few hundred bytes
//! can claim terabytes (a zero stride repeating one element, one storage named by
//! thousands of tensors, a zip entry inflating a thousandfold). Reading charges what it
//! produces against an allowance proportional to the file.

/// More dimensions than any weight has; the element walk costs one step per dimension.
pub const MAX_DIMS: usize = 64;

/// Bytes any checkpoint may produce beyond its proportional share.
const ALLOWANCE: usize = 64 << 20;

/// Bytes produced per byte of file: a zip checkpoint yields its storages once as entries and
/// once as tensors; tied weights (two names, one storage) add a copy.
const PER_FILE_BYTE: usize = 4;

/// Checks a tensor's shape: at most [`MAX_DIMS`] dimensions, and an element count that no
/// partial product overflows in either order (candle multiplies from the last dimension
/// when it derives strides; a leading zero must not hide an overflow behind it). Returns the
/// element count.
pub fn check_shape(name: &str, shape: &[usize]) -> Result<usize, String> {
    if shape.len() > MAX_DIMS {
        return Err(format!(
            "{name}: {} dimensions (at most {MAX_DIMS})",
            shape.len()
        ));
    }
    let nonzero = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)));
    match nonzero {
        Some(_) => Ok(shape.iter().product()),
        None => Err(format!("{name}: shape {shape:?} has too many elements")),
    }
}

/// Bytes a read may still produce.
#[derive(Debug)]
pub struct ReadBudget {
    left: usize,
    total: usize,
}

impl ReadBudget {
    pub fn for_file(len: usize) -> Self {
        let total = ALLOWANCE.saturating_add(len.saturating_mul(PER_FILE_BYTE));
        Self { left: total, total }
    }

    pub fn left(&self) -> usize {
        self.left
    }

    /// Takes `bytes` for `what`, or says that the file asks for more than it backs.
    pub fn spend(&mut self, bytes: usize, what: impl FnOnce() -> String) -> Result<(), String> {
        self.left = self.left.checked_sub(bytes).ok_or_else(|| {
            format!(
                "{}: the checkpoint asks for more than {} MiB of data, out of proportion to its size (corrupt or crafted)",
                what(),
                self.total >> 20
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_overflowing_in_any_order_are_refused() {
        assert_eq!(check_shape("w", &[2, 3]).unwrap(), 6);
        assert_eq!(check_shape("w", &[]).unwrap(), 1);
        assert_eq!(check_shape("w", &[0, 1 << 40]).unwrap(), 0);
        for shape in [
            vec![0, 1 << 32, 1 << 32],
            vec![1 << 32, 1 << 32, 0],
            vec![1; 65],
        ] {
            let e = check_shape("w", &shape).unwrap_err();
            assert!(e.starts_with("w: "), "{e}");
        }
    }

    #[test]
    fn the_budget_grows_with_the_file_and_runs_out() {
        let mut b = ReadBudget::for_file(1 << 20);
        assert_eq!(b.left(), (64 << 20) + (4 << 20));
        b.spend(68 << 20, || "a".into()).unwrap();
        let e = b.spend(1, || "tensor x".into()).unwrap_err();
        assert!(e.starts_with("tensor x: ") && e.contains("68 MiB"), "{e}");
    }
}
