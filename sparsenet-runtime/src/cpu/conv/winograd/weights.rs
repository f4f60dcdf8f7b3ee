//! The weight transform `U = G g G^T`, computed in f64 and rounded once.

use super::*;

/// `U = G g G^T` for every (output, input) channel pair for output tiles
/// of side `m`, laid out `[xi][o][c]`: for one `xi`, the weight matrix of
/// that position's product.
pub(super) fn transform_weights(weight: &[f32], cout: usize, cin: usize, m: usize) -> Scratch<f32> {
    // Every element is written below.
    let mut s = Scratch::<f32>::stale(positions(m) * cout * cin);
    transform_weights_into(weight, cout, cin, m, &mut s.0);
    s
}

/// [`transform_weights`] into `u` (`(m + 2)^2 * cout * cin` floats).
pub(super) fn transform_weights_into(
    weight: &[f32],
    cout: usize,
    cin: usize,
    m: usize,
    u: &mut [f32],
) {
    match m {
        2 => transform_weights_f2(weight, cout, cin, u),
        _ => f4::transform_weights_into(weight, cout, cin, u),
    }
}

/// F(2x2, 3x3)'s `U`, with
/// `G` = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
pub(super) fn transform_weights_f2(weight: &[f32], cout: usize, cin: usize, u: &mut [f32]) {
    assert_eq!(u.len(), XI * cout * cin, "U holds 16 x cout x cin");
    // The rows of G applied to three values.
    let g = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    for o in 0..cout {
        for c in 0..cin {
            let k = &weight[(o * cin + c) * 9..(o * cin + c + 1) * 9];
            // G g: 4 rows of 3, column by column.
            let cols: [[f32; 4]; 3] = std::array::from_fn(|j| g(k[j], k[3 + j], k[6 + j]));
            for i in 0..4 {
                let row = g(cols[0][i], cols[1][i], cols[2][i]);
                for (j, &v) in row.iter().enumerate() {
                    u[((4 * i + j) * cout + o) * cin + c] = v;
                }
            }
        }
    }
}
