//! A convolution prepared for the Winograd path ([`PreparedConv`]): the
//! choice of path, the transformed weights, and the loop over an image's
//! blocks (input transform, products, output transform).

use super::*;

/// A 3x3 or other stride-1 convolution over the padded planes (or pointwise
/// layout) of `d`, ready to run image by image: its weights, and their
/// Winograd transform when [`Tiling::forward`] takes the geometry. Made once per
/// convolution call, used for every image.
pub struct PreparedConv<'a> {
    pub(super) d: &'a Direct,
    pub(super) weight: &'a [f32],
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) winograd: Option<Transformed>,
}

/// The transformed weights `U[xi][o][c] = (G g[o][c] G^T)[xi]` and the
/// product geometry of a block.
pub(super) struct Transformed {
    pub(super) tiling: Tiling,
    pub(super) u: Weights,
    pub(super) product: Direct,
}

/// `U`, made for the call or shared from the cache.
pub(super) enum Weights {
    Fresh(Scratch<f32>),
    Cached(Arc<Vec<f32>>),
}

impl Weights {
    pub(super) fn as_slice(&self) -> &[f32] {
        match self {
            Weights::Fresh(s) => &s.0,
            Weights::Cached(v) => v,
        }
    }
}

impl<'a> PreparedConv<'a> {
    /// `weight` is OIHW (cout x cin x k x k); `images` is how many images
    /// the convolution will run over. Fewer than [`MIN_CHANNELS`] input or
    /// output channels, or fewer images than threads (a batch-1 pass, whose
    /// threads split an image's output channels), keep the direct kernel.
    /// The weights' transform costs about as much as the products of 16 x
    /// 16 output positions: a call over fewer than [`MIN_POSITIONS`] in all
    /// takes it from a per-thread cache keyed by the weights' values inside
    /// an inference pass image by image, and keeps the direct kernel
    /// anywhere else. Tiles of 4x4 outputs where [`large_tiles`] is on and
    /// the geometry allows them, else of 2x2.
    pub fn new(d: &'a Direct, weight: &'a [f32], cin: usize, cout: usize, images: usize) -> Self {
        Self::with_tiles(d, weight, cin, cout, images, large_tiles())
    }

    /// [`PreparedConv::new`] with F(4x4, 3x3) allowed or not (`large`),
    /// whatever [`large_tiles`] says.
    pub fn with_tiles(
        d: &'a Direct,
        weight: &'a [f32],
        cin: usize,
        cout: usize,
        images: usize,
        large: bool,
    ) -> Self {
        assert_eq!(
            weight.len(),
            cout * cin * d.k * d.k,
            "weight is cout x cin x k x k"
        );
        // Fewer images than threads: a batch-1 pass, whose threads split
        // each image's blocks (`run_split`).
        let threads = crate::cpu::parallel::threads::available();
        let parts = if images < threads { threads } else { 1 };
        let winograd = match source(d, cin, cout, images) {
            Source::None => None,
            how => Tiling::forward(d, large, parts).map(|tiling| Transformed {
                tiling,
                u: if how == Source::Fresh {
                    Weights::Fresh(transform_weights(weight, cout, cin, tiling.m))
                } else {
                    Weights::Cached(cached_transform(weight, cout, cin, tiling.m))
                },
                // V's channel rows one after the other (`VLayout::XiRows`),
                // M's output rows one per position apart.
                product: Direct::matrix(tiling.nt, tiling.nt, tiling.positions() * tiling.nt),
            }),
        };
        PreparedConv {
            d,
            weight,
            cin,
            cout,
            winograd,
        }
    }

    /// Floats of the scratch buffer [`PreparedConv::run`] uses for `cn`
    /// output channels of an image (it grows the buffer it is given to
    /// this): so that callers can take one of this size from the
    /// per-thread pool once instead of growing a fresh one.
    pub fn scratch_len(&self, cn: usize) -> usize {
        match &self.winograd {
            None if self.d.rows => 0,
            None => cn * self.d.out_plane,
            Some(t) => winograd_scratch_len(self.cin, cn, &t.tiling),
        }
    }

    /// Whether [`PreparedConv::run_split`] splits the direct kernel's
    /// positions rather than its output channels: where the channels make
    /// fewer parts than there are threads (`SPARSENET_SPLIT=channels` keeps
    /// the channel split, to measure what this gains).
    fn by_positions(&self) -> bool {
        static CHANNELS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let off = *CHANNELS
            .get_or_init(|| std::env::var("SPARSENET_SPLIT").is_ok_and(|v| v == "channels"));
        let threads = crate::cpu::parallel::threads::available();
        !off && self.d.rows
            && direct::out_channel_parts(self.cout) < threads
            && self.d.offs_len() >= 4 * threads
    }

    /// Whether the Winograd path runs.
    pub fn is_winograd(&self) -> bool {
        self.winograd.is_some()
    }

    /// The side of the Winograd output tiles (2 or 4), `None` on the
    /// direct kernel.
    pub fn tile_size(&self) -> Option<usize> {
        self.winograd.as_ref().map(|t| t.tiling.m)
    }

    /// Every output channel of one image, split over the threads (a
    /// batch-1 pass, where the threads share each image): the direct
    /// kernel by output channels, the Winograd path by blocks of tile rows
    /// (split by output channels, each thread would transform the whole
    /// input). `out` holds the `cout` planes, `ep` covers them.
    pub fn run_split(&self, input: Input, out: &mut [f32], ep: Option<Epilogue>) {
        let Some(t) = &self.winograd else {
            let hw = self.d.ho * self.d.wo;
            if let (Input::Padded(x), true) = (input, self.by_positions()) {
                // Too few output channels to split: split the positions.
                return direct::forward_split_positions(
                    self.d,
                    x,
                    self.cin,
                    self.weight,
                    self.cout,
                    out,
                    ep,
                );
            }
            crate::cpu::conv::direct::split_out_channels(out, hw, |c0, cn, part| {
                let mut grid = Scratch::<f32>::stale(self.scratch_len(cn));
                let e = ep.map(|e| e.channels(c0, cn));
                self.run(input, c0, cn, part, &mut grid.0, e);
            });
            return;
        };
        let (d, tl) = (self.d, t.tiling);
        assert!(
            out.len() >= self.cout * d.h * d.w,
            "output holds cout planes"
        );
        let blocks = tl.th / tl.rows;
        let per = blocks.div_ceil(crate::cpu::parallel::threads::available().min(blocks));
        let base = crate::cpu::parallel::SharedMut(out.as_mut_ptr());
        crate::cpu::parallel::team::for_each_part(blocks.div_ceil(per), &|i| {
            let mut scratch = Scratch::<f32>::stale(winograd_scratch_len(self.cin, self.cout, &tl));
            let mine = i * per..blocks.min((i + 1) * per);
            let (cin, cout) = (self.cin, self.cout);
            // SAFETY: `out` holds the planes (checked) and outlives the
            // call; each part writes the rows of its own blocks only.
            unsafe {
                image_blocks(
                    d,
                    t,
                    input,
                    cin,
                    cout,
                    0,
                    cout,
                    base.at(0),
                    &mut scratch.0,
                    ep,
                    mine,
                )
            }
        });
    }

    /// Output channels `c0..c0 + cn` of one image: `input` holds the `cin`
    /// input channels (in the layout of `d`; as planes only on the Winograd
    /// path, see [`PreparedConv::is_winograd`]), `out` `cn` NCHW planes of
    /// `ho * wo`, `scratch` anything (resized as needed, contents stale),
    /// `ep` the epilogue of those `cn` channels.
    pub fn run(
        &self,
        input: Input,
        c0: usize,
        cn: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        ep: Option<Epilogue>,
    ) {
        assert!(
            c0 + cn <= self.cout,
            "output channels within the convolution"
        );
        let per_out = self.cin * self.d.k * self.d.k;
        match (&self.winograd, input) {
            (None, Input::Padded(x)) => {
                let w = &self.weight[c0 * per_out..(c0 + cn) * per_out];
                direct::forward_nchw(self.d, x, self.cin, w, cn, out, scratch, ep)
            }
            (None, Input::Planes { .. }) => {
                panic!("the direct kernel reads its input in the padded layout")
            }
            (Some(t), input) => {
                assert!(
                    out.len() >= cn * self.d.h * self.d.w,
                    "output holds cn planes"
                );
                let blocks = 0..t.tiling.th / t.tiling.rows;
                let (cin, cout, d) = (self.cin, self.cout, self.d);
                // SAFETY: `out` holds the cn planes (checked) and is this
                // call's alone.
                unsafe {
                    image_blocks(
                        d,
                        t,
                        input,
                        cin,
                        cout,
                        c0,
                        cn,
                        out.as_mut_ptr(),
                        scratch,
                        ep,
                        blocks,
                    )
                }
            }
        }
    }
}

/// [`PreparedConv::run`]'s Winograd path: output channels `c0..c0 + cn`
/// of one image for blocks `blocks` of tile rows, into the `cn` planes at
/// `out`.
///
/// # Safety
/// `out` points at `cn` planes of h x w floats, whose rows of these blocks
/// nothing else reads or writes meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn image_blocks(
    d: &Direct,
    t: &Transformed,
    input: Input,
    cin: usize,
    cout: usize,
    c0: usize,
    cn: usize,
    out: *mut f32,
    scratch: &mut Vec<f32>,
    ep: Option<Epilogue>,
    blocks: Range<usize>,
) {
    let tl = t.tiling;
    assert!(blocks.end * tl.rows <= tl.th, "blocks of the image");
    assert!(c0 + cn <= cout, "output channels within the convolution");
    if let Some(e) = &ep {
        assert!(
            e.scale.len() >= cn && e.shift.len() >= cn,
            "epilogue covers the output channels"
        );
    }
    // V is [xi][c][t] (see `VLayout::XiRows`) and M [o][xi][t]: the
    // output transform reads each channel's 16 (36) products of a block as
    // one run. The product of position xi writes every 16th (36th) run of M, from
    // xi's; one run of slack after each lets that slice cover whole
    // channels.
    let (xs, xi) = (xi_stride(cin, tl.nt), tl.positions());
    let (v_len, m_len) = (xi * xs, xi * (cn + 1) * tl.nt);
    let r_len = tl.rows_len();
    scratch.resize(winograd_scratch_len(cin, cn, &tl), 0.0);
    let (v, rest) = scratch.split_at_mut(v_len);
    let (m, rest) = rest.split_at_mut(m_len);
    let (rows, strip) = rest.split_at_mut(r_len);
    // What the last vector of tiles reads past the padded row is zero.
    rows.fill(0.0);
    simd::dispatch(Blocks {
        d,
        t,
        input,
        cin,
        cout,
        c0,
        cn,
        out,
        v,
        m,
        rows,
        strip,
        ep,
        blocks,
    })
}

/// [`image_blocks`]' arguments and buffers as a [`Kernel`]: the transforms
/// and products of each block in one body per instruction set.
struct Blocks<'a> {
    d: &'a Direct,
    t: &'a Transformed,
    input: Input<'a>,
    cin: usize,
    cout: usize,
    c0: usize,
    cn: usize,
    out: *mut f32,
    v: &'a mut [f32],
    m: &'a mut [f32],
    rows: &'a mut [f32],
    strip: &'a mut [f32],
    ep: Option<Epilogue<'a>>,
    blocks: Range<usize>,
}

impl Kernel for Blocks<'_> {
    type Output = ();
    // SAFETY: the buffers were sized by `image_blocks` for this tiling;
    // stores stay in planes < cn, in these blocks' rows (the caller's).
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let Blocks {
            d,
            t,
            input,
            cin,
            cout,
            c0,
            cn,
            out,
            v,
            m,
            rows,
            strip,
            ep,
            blocks,
        } = self;
        let tl = t.tiling;
        let (xs, xi) = (xi_stride(cin, tl.nt), tl.positions());
        for ty0 in blocks.map(|b| b * tl.rows) {
            let layout = VLayout::XiRows;
            transform_block::<S>(d, &tl, input, cin, ty0, v, rows, strip, layout);
            for x in 0..xi {
                let u = &t.u.as_slice()[(x * cout + c0) * cin..(x * cout + c0 + cn) * cin];
                let mx = &mut m[x * tl.nt..];
                let product = direct::Forward {
                    d: &t.product,
                    x: &v[x * xs..],
                    cin,
                    weight: u,
                    cout: cn,
                    out: mx.as_mut_ptr(),
                    out_len: mx.len(),
                    ep: None,
                    groups: 0..t.product.offs_len(),
                };
                product.check();
                direct::forward_in::<S>(product);
            }
            match tl.m {
                2 => transform_output::<S>(d, &tl, m, cn, ty0, out, ep),
                _ => f4::transform_output::<S>(d, &tl, m, cn, ty0, out, ep),
            }
        }
    }
}
