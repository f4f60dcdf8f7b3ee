//! The weight gradient through the Winograd transforms ([`WeightGrad`]):
//! `D = A dY A^T` per tile, the reductions over tiles on the pointwise
//! weight-gradient kernel, and `dW = G^T dU G`.

use super::*;

/// The weight gradient of a 3x3 pad-1 convolution through F(2x2, 3x3) or
/// F(4x4, 3x3) ([`f4`]): the forward pass is `Y = A^T [U (.) V] A` per
/// tile, so `dU[xi][o][c] = sum over tiles of (A dY A^T)[xi][o] V[xi][c]`
/// (16 or 36 matrix products that reduce over the tiles) and
/// `dW = G^T dU G`. 2.25x (4x) fewer products than the direct weight
/// gradient's; the products run on [`pointwise_wgrad::weight_grad`] with
/// the tiles as its positions.
pub struct WeightGrad {
    pub(super) tiling: Tiling,
    /// The pointwise layout over one block's tiles (`V` per `xi`).
    pub(super) block: Direct,
    pub(super) cin: usize,
    pub(super) cout: usize,
}

impl WeightGrad {
    /// For a convolution over the padded planes of `d` with `cin` inputs,
    /// `cout` outputs and `images` images in all; `None` where the direct
    /// kernel does it (other geometries, rows of tiles that are not whole
    /// vectors, too few positions; see [`PreparedConv::new`]).
    pub fn new(d: &Direct, cin: usize, cout: usize, images: usize) -> Option<Self> {
        Self::with_tiles(d, cin, cout, images, large_tiles())
    }

    /// [`WeightGrad::new`] with 4x4 tiles allowed or not (`large`).
    pub fn with_tiles(
        d: &Direct,
        cin: usize,
        cout: usize,
        images: usize,
        large: bool,
    ) -> Option<Self> {
        // Its transforms of the weights' gradient are made per call: only
        // where a forward call would transform its weights afresh.
        if source(d, cin, cout, images) != Source::Fresh {
            return None;
        }
        // 4x4 tiles where the forward takes them, with blocks of whole
        // blocks of the pointwise layout; else 2x2 tiles in rows of whole
        // vectors.
        let f4 = Tiling::f4(d).filter(|t| large && t.nt.is_multiple_of(16));
        let tiling = f4.or_else(|| Tiling::f2(d).filter(|t| t.tw.is_multiple_of(8)))?;
        Some(WeightGrad {
            tiling,
            block: Direct::pointwise(1, tiling.nt, cin),
            cin,
            cout,
        })
    }

    /// The side of the output tiles (2 or 4).
    pub fn tile_size(&self) -> usize {
        self.tiling.m
    }

    /// Floats of the accumulator [`WeightGrad::image`] sums into: one of
    /// [`pointwise_wgrad::acc_len`] per `xi`. Zero it before the first image.
    pub fn acc_len(&self) -> usize {
        self.tiling.positions() * pointwise_wgrad::acc_len(self.cin, self.cout)
    }

    /// Floats of the scratch buffer [`WeightGrad::image`] uses.
    pub fn scratch_len(&self) -> usize {
        let (tl, wd) = (&self.tiling, pointwise_wgrad::width(self.cout));
        let xi = tl.positions();
        xi * xi_stride(self.cin, tl.nt)
            + xi * tl.nt * wd
            + tl.m * tl.rows * tl.m * tl.tw * wd
            + tl.rows_len()
            + strip_len(tl)
    }

    /// Adds one image's products into `acc`: `input` holds its `cin` input
    /// channels, `dy` its `cout` NCHW output-gradient planes (h x w).
    pub fn image(
        &self,
        d: &Direct,
        input: Input,
        dy: &[f32],
        acc: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (tl, cin, cout) = (self.tiling, self.cin, self.cout);
        let (wd, hw, w) = (pointwise_wgrad::width(cout), d.h * d.w, d.w);
        assert!(
            (d.k, d.pad, d.h, d.w) == (3, 1, tl.m * tl.th, tl.m * tl.tw),
            "the geometry this was made for"
        );
        assert!(dy.len() >= cout * hw, "output gradient holds cout planes");
        assert!(
            acc.len() >= self.acc_len(),
            "accumulator holds acc_len floats"
        );
        let per_acc = pointwise_wgrad::acc_len(cin, cout);
        let (xs, xi) = (xi_stride(cin, tl.nt), tl.positions());
        let (v_len, dt_len) = (xi * xs, xi * tl.nt * wd);
        let block_len = tl.m * tl.rows * w;
        scratch.resize(self.scratch_len(), 0.0);
        let (v, rest) = scratch.split_at_mut(v_len);
        let (dt, rest) = rest.split_at_mut(dt_len);
        let (g, rest) = rest.split_at_mut(block_len * wd);
        let (rows, strip) = rest.split_at_mut(tl.rows_len());
        rows.fill(0.0);
        for ty0 in (0..tl.th).step_by(tl.rows) {
            /// One block's transforms (`V`, `dY` transposed, `D`) as a
            /// [`Kernel`].
            struct Transforms<'a> {
                d: &'a Direct,
                tl: Tiling,
                input: Input<'a>,
                cin: usize,
                cout: usize,
                ty0: usize,
                dy: &'a [f32],
                v: &'a mut [f32],
                rows: &'a mut [f32],
                strip: &'a mut [f32],
                g: &'a mut [f32],
                dt: &'a mut [f32],
            }
            impl Kernel for Transforms<'_> {
                type Output = ();
                // SAFETY: buffers sized by `image`; reads of `dy` within
                // output rows m ty0 .. m (ty0 + rows) of each plane.
                #[inline(always)]
                unsafe fn run<S: Simd>(self) {
                    let Transforms {
                        d,
                        tl,
                        input,
                        cin,
                        cout,
                        ty0,
                        dy,
                        v,
                        rows,
                        strip,
                        g,
                        dt,
                    } = self;
                    let (wd, hw, w) = (pointwise_wgrad::width(cout), d.h * d.w, d.w);
                    let layout = VLayout::PointwiseBlocks;
                    transform_block::<S>(d, &tl, input, cin, ty0, v, rows, strip, layout);
                    transpose_block::<S>(&tl, dy, cout, hw, w, ty0, g);
                    match tl.m {
                        2 => transform_output_grad::<S>(&tl, g, wd, w, dt),
                        _ => f4::transform_output_grad::<S>(&tl, g, wd, w, dt),
                    }
                }
            }
            simd::dispatch(Transforms {
                d,
                tl,
                input,
                cin,
                cout,
                ty0,
                dy,
                v: &mut *v,
                rows: &mut *rows,
                strip: &mut *strip,
                g: &mut *g,
                dt: &mut *dt,
            });
            for x in 0..xi {
                pointwise_wgrad::weight_grad(
                    &self.block,
                    &v[x * xs..x * xs + cin * tl.nt],
                    cin,
                    &dt[x * tl.nt * wd..(x + 1) * tl.nt * wd],
                    cout,
                    &mut acc[x * per_acc..(x + 1) * per_acc],
                );
            }
        }
    }

    /// Adds `G^T dU G` into `dw` (OIHW, cout x cin x 3 x 3), `dU` the sums
    /// in `acc`, and zeroes `acc`.
    pub fn fold(&self, acc: &mut [f32], dw: &mut [f32]) {
        let (cin, cout) = (self.cin, self.cout);
        assert!(dw.len() >= cout * cin * 9, "dw is cout x cin x 3 x 3");
        let per_acc = pointwise_wgrad::acc_len(cin, cout);
        let xi = self.tiling.positions();
        // The folds below add into it.
        let mut du = Scratch::<f32>::zeros(xi * cout * cin);
        let du = &mut du.0;
        for x in 0..xi {
            pointwise_wgrad::fold(
                &mut acc[x * per_acc..(x + 1) * per_acc],
                cin,
                cout,
                &mut du[x * cout * cin..(x + 1) * cout * cin],
            );
        }
        if self.tiling.m == 4 {
            f4::fold(du, cout, cin, dw);
            return;
        }
        // G^T applied to 4 values: the adjoint of `transform_weights`' G.
        let gt =
            |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
        for o in 0..cout {
            for c in 0..cin {
                let u = |i: usize, j: usize| du[((4 * i + j) * cout + o) * cin + c];
                // Along rows (j) first, then down the columns (i).
                let rows: [[f32; 3]; 4] =
                    std::array::from_fn(|i| gt(u(i, 0), u(i, 1), u(i, 2), u(i, 3)));
                let k = &mut dw[(o * cin + c) * 9..(o * cin + c + 1) * 9];
                for j in 0..3 {
                    let col = gt(rows[0][j], rows[1][j], rows[2][j], rows[3][j]);
                    for i in 0..3 {
                        k[3 * i + j] += col[i];
                    }
                }
            }
        }
    }
}

/// The output-gradient rows of the block at tile row `ty0` (`m rows` rows
/// of each of the `cout` planes of `dy`) transposed into `g`: positions x
/// channels, rows of `wd` (columns past `cout` zero), which the transforms
/// of the output gradient read a vector of 8 channels at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transpose_block<S: Simd>(
    tl: &Tiling,
    dy: &[f32],
    cout: usize,
    hw: usize,
    w: usize,
    ty0: usize,
    g: &mut [f32],
) {
    let wd = pointwise_wgrad::width(cout);
    let np = tl.m * tl.rows * w;
    let base = tl.m * ty0 * w;
    assert!((cout - 1) * hw + base + np <= dy.len());
    assert!(g.len() >= np * wd, "g holds the block's positions");
    let o8 = cout / 8 * 8;
    for o in (0..o8).step_by(8) {
        for p in (0..np).step_by(8) {
            simd::transpose8::<S::W8>(
                dy.as_ptr().add(o * hw + base + p),
                hw,
                g.as_mut_ptr().add(p * wd + o),
                wd,
            );
        }
    }
    for p in 0..np {
        for o in o8..wd {
            g[p * wd + o] = if o < cout { dy[o * hw + base + p] } else { 0.0 };
        }
    }
}

/// `D[xi][t][o] = (A dY A^T)[xi]` for the tiles `t` of a block, rows of `wd`,
/// from `g` (see [`transpose_block`]), with
/// `A` = [[1, 0], [1, 1], [1, -1], [0, -1]]: each tile's four positions
/// combined a vector of 8 channels at a time.
#[inline(always)]
pub(super) unsafe fn transform_output_grad<S: Simd>(
    tl: &Tiling,
    g: &[f32],
    wd: usize,
    w: usize,
    dt: &mut [f32],
) {
    let nt = tl.nt;
    assert!(g.len() >= 2 * tl.rows * w * wd, "g holds the block's rows");
    assert!(dt.len() >= XI * nt * wd, "D holds 16 x nt rows");
    let gp = g.as_ptr();
    let dp = dt.as_mut_ptr();
    debug_assert!(
        tl.slots(),
        "the weight gradient's rows of tiles are whole vectors"
    );
    for t in 0..nt {
        let (r, tx) = (t / tl.tw, t % tl.tw);
        let p00 = 2 * r * w + 2 * tx;
        // Where V has tile t.
        let t_slot = slot(t);
        for o in (0..wd).step_by(8) {
            let at = |p: usize| S::W8::load(gp.add(p * wd + o));
            let (a, b, c, d) = (at(p00), at(p00 + 1), at(p00 + w), at(p00 + w + 1));
            // Down: rows A (a, b; c, d); then along each.
            let zero = S::W8::zero();
            let h = [
                (a, b),
                (a.add(c), b.add(d)),
                (a.sub(c), b.sub(d)),
                (zero.sub(c), zero.sub(d)),
            ];
            for (i, (u, v)) in h.into_iter().enumerate() {
                let vals = [u, u.add(v), u.sub(v), zero.sub(v)];
                for (j, val) in vals.into_iter().enumerate() {
                    val.store(dp.add(((4 * i + j) * nt + t_slot) * wd + o));
                }
            }
        }
    }
}
