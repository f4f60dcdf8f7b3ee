//! A safe, strided matrix product over the `gemm` crate (AVX2/AVX-512
//! kernels chosen at run time). Kernels parallelise over images themselves,
//! so each product here runs on the calling thread.

use crate::Float;

/// A read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major (rows x cols) matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m x n, row-major) = [dst +] lhs (m x k) * rhs (k x n)`.
pub fn matmul<T: Float>(dst: &mut [T], lhs: Mat<'_, T>, rhs: Mat<'_, T>, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions agree");
    assert!(
        dst.len() >= m * n && lhs.fits() && rhs.fits(),
        "matrix views fit their data"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    // SAFETY: the asserts above check that every index the product touches
    // lies inside `dst`, `lhs.data` and `rhs.data`; `dst` is exclusively
    // borrowed, so it cannot alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_with_transposes() {
        let a: Vec<f64> = (0..12).map(|v| v as f64 * 0.5 - 2.0).collect(); // 3x4
        let b: Vec<f64> = (0..20).map(|v| (v % 7) as f64 - 3.0).collect(); // 4x5
        let mut c = vec![1.0; 15];
        matmul(&mut c, Mat::rows(&a, 3, 4), Mat::rows(&b, 4, 5), true);
        for i in 0..3 {
            for j in 0..5 {
                let want: f64 = 1.0 + (0..4).map(|p| a[i * 4 + p] * b[p * 5 + j]).sum::<f64>();
                assert_eq!(c[i * 5 + j], want);
            }
        }
        // (b^T a^T) = (a b)^T
        let mut ct = vec![0.0; 15];
        matmul(
            &mut ct,
            Mat::rows(&b, 4, 5).t(),
            Mat::rows(&a, 3, 4).t(),
            false,
        );
        for i in 0..3 {
            for j in 0..5 {
                assert_eq!(ct[j * 3 + i], c[i * 5 + j] - 1.0);
            }
        }
    }
}
