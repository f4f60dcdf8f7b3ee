// The convolutions' data gradient where the tiled one does not apply.

// ---- backward ---------------------------------------------------------------

// dz = d loss / d (transformed, concatenated input) of a convolution: the
// transposed convolution, one thread per input element. For the strided
// convolutions (an ImageNet stem); stride 1 takes ConvBackwardData.
template <class L>
SN_DEVICE void conv_backward_input(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO, H = L::H, W = L::W;
    const stored* dy = out_grad<L>(a);
    SN_FOR_EACH(i, (i64)a.n * L::CIN * H * W) {
        const Nchw e = nchw(i, L::CIN, H, W);
        const int x = e.x, y = e.y, cg = e.c, img = e.img;
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky) {
            const int ty = y + L::PAD - ky;
            if (ty < 0 || ty % L::STRIDE != 0) continue;
            const int oy = ty / L::STRIDE;
            if (oy >= HO) continue;
            for (int kx = 0; kx < K; ++kx) {
                const int tx = x + L::PAD - kx;
                if (tx < 0 || tx % L::STRIDE != 0) continue;
                const int ox = tx / L::STRIDE;
                if (ox >= WO) continue;
                SN_NO_UNROLL for (int co = 0; co < L::COUT; ++co)
                    acc += ld(dy[(((i64)img * L::COUT + co) * HO + oy) * WO + ox]) *
                           a.params[L::WEIGHT + (((i64)co * L::CIN + cg) * K + ky) * K + kx];
            }
        }
        a.gact[L::DZ * a.n + i] = st(acc);
    }
}
