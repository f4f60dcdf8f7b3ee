//! The 1x1 weight gradient (`pointwise_wgrad`): the transpose of the output
//! gradient and the register-tiled products against their definitions.

use sparsenet_runtime::__private::direct::Direct;
use sparsenet_runtime::__private::pointwise_wgrad::*;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) * 0.07)
        .collect()
}

/// Shapes with position counts that are not whole blocks (7x7, 5x3,
/// 1x1), output widths that are not whole vectors or tiles, and input
/// counts that are not whole tiles.
const SHAPES: [(usize, usize, usize, usize); 8] = [
    (24, 96, 32, 32),
    (13, 12, 8, 8),
    (7, 60, 16, 16),
    (6, 5, 7, 7),
    (1, 1, 5, 3),
    (9, 17, 1, 1),
    (20, 33, 4, 12),
    (156, 96, 4, 4),
];

pub fn transpose_matches_its_definition() {
    for (_, cout, h, w) in SHAPES {
        let hw = h * w;
        let dt = Direct::pointwise(h, w, cout);
        let dy = values(cout * hw, 1);
        let mut dyp = vec![f32::NAN; dt.input_len(cout)];
        dt.fill_planes(&dy, &mut dyp);
        let mut dyt = vec![f32::NAN; dyt_len(&dt, cout)];
        transpose(&dt, &dyp, cout, &mut dyt);
        let wd = width(cout);
        for (p, row) in dyt.chunks_exact(wd).enumerate() {
            for (o, &v) in row.iter().enumerate() {
                let want = if p < hw && o < cout {
                    dy[o * hw + p]
                } else {
                    0.0
                };
                assert_eq!(v, want, "position {p} channel {o} of {cout} on {h}x{w}");
            }
        }
    }
}

/// The weight gradient over two images against the f64 sum from its
/// definition, starting from stale contents in `acc` that `fold` must
/// then clear.
pub fn weight_gradient_matches_the_definition() {
    for (cin, cout, h, w) in SHAPES {
        let hw = h * w;
        let d = Direct::pointwise(h, w, cin);
        let dt = Direct::pointwise(h, w, cout);
        let mut acc = vec![0.0f32; acc_len(cin, cout)];
        let mut want = vec![0.0f64; cout * cin];
        for img in 0..2 {
            let x = values(cin * hw, 3 + img);
            let dy = values(cout * hw, 5 + img);
            for o in 0..cout {
                for c in 0..cin {
                    want[o * cin + c] += (0..hw)
                        .map(|p| dy[o * hw + p] as f64 * x[c * hw + p] as f64)
                        .sum::<f64>();
                }
            }
            let mut xp = vec![f32::NAN; d.input_len(cin)];
            d.fill_planes(&x, &mut xp);
            let mut dyp = vec![f32::NAN; dt.input_len(cout)];
            dt.fill_planes(&dy, &mut dyp);
            let mut dyt = vec![f32::NAN; dyt_len(&dt, cout)];
            transpose(&dt, &dyp, cout, &mut dyt);
            weight_grad(&d, &xp, cin, &dyt, cout, &mut acc);
        }
        let mut dw = vec![0.5f32; cout * cin];
        fold(&mut acc, cin, cout, &mut dw);
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (&got, &w)) in dw.iter().zip(&want).enumerate() {
            let err = (got as f64 - 0.5 - w).abs() / scale;
            assert!(
                err < 1e-5,
                "weight {i} of {cout}x{cin} on {h}x{w}: {got} against {}",
                w + 0.5
            );
        }
        assert!(
            acc.iter().all(|&v| v == 0.0),
            "fold leaves the accumulator zeroed"
        );
    }
}
