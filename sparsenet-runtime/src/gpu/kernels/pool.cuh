// Average and max pooling over the virtual concatenation.

// ---- forward ----------------------------------------------------------------

template <class L>
SN_DEVICE void avg_pool_forward(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HO * WO) {
        const Nchw e = nchw(i, L::CIN, HO, WO);
        const int ox = e.x, oy = e.y, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        const stored* plane = src_plane<L>(a, s, img, c);
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx)
                acc += pre_apply<L>(a, cg, ld(plane[(oy * L::STRIDE + ky) * L::W + ox * L::STRIDE + kx]));
        a.act[L::OUT * a.n + i] = st(acc * ((real)1 / (K * K)));
    }
}

// Index (within the plane) of the first maximum of one max-pool window, or -1.
template <class L>
SN_DEVICE int max_pool_argmax(const Args& a, int cg, const stored* plane, int oy, int ox, real& best) {
    best = (real)SN_NEG_INF;
    int at = -1;
    for (int ky = 0; ky < L::K; ++ky) {
        const int iy = oy * L::STRIDE - L::PAD + ky;
        if (iy < 0 || iy >= L::H) continue;
        for (int kx = 0; kx < L::K; ++kx) {
            const int ix = ox * L::STRIDE - L::PAD + kx;
            if (ix < 0 || ix >= L::W) continue;
            const real v = pre_apply<L>(a, cg, ld(plane[iy * L::W + ix]));
            // A NaN is the window's maximum (as in PyTorch): never skipped.
            if (v > best || v != v) {
                best = v;
                at = iy * L::W + ix;
                if (v != v) return at;
            }
        }
    }
    return at;
}

template <class L>
SN_DEVICE void max_pool_forward(const Args& a) {
    constexpr int HO = L::HO, WO = L::WO;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HO * WO) {
        const Nchw e = nchw(i, L::CIN, HO, WO);
        const int ox = e.x, oy = e.y, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        real best;
        max_pool_argmax<L>(a, cg, src_plane<L>(a, s, img, c), oy, ox, best);
        a.act[L::OUT * a.n + i] = st(best);
    }
}

// ---- backward ---------------------------------------------------------------

template <class L>
SN_DEVICE void avg_pool_backward_input(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO, H = L::H, W = L::W;
    const stored* dy = out_grad<L>(a);
    SN_FOR_EACH(i, (i64)a.n * L::CIN * H * W) {
        const int x = (int)(i % W);
        const int y = (int)((i / W) % H);
        const i64 plane = i / ((i64)W * H);  // img * CIN + cg
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky) {
            const int ty = y - ky;
            if (ty < 0 || ty % L::STRIDE != 0 || ty / L::STRIDE >= HO) continue;
            for (int kx = 0; kx < K; ++kx) {
                const int tx = x - kx;
                if (tx < 0 || tx % L::STRIDE != 0 || tx / L::STRIDE >= WO) continue;
                acc += ld(dy[(plane * HO + ty / L::STRIDE) * WO + tx / L::STRIDE]);
            }
        }
        a.gact[L::DZ * a.n + i] = st(acc * ((real)1 / (K * K)));
    }
}

template <class L>
SN_DEVICE void max_pool_backward_input(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO, H = L::H, W = L::W;
    const stored* dy = out_grad<L>(a);
    SN_FOR_EACH(i, (i64)a.n * L::CIN * H * W) {
        const Nchw e = nchw(i, L::CIN, H, W);
        const int x = e.x, y = e.y, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        const stored* plane = src_plane<L>(a, s, img, c);
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky) {
            const int ty = y + L::PAD - ky;
            if (ty < 0 || ty % L::STRIDE != 0 || ty / L::STRIDE >= HO) continue;
            for (int kx = 0; kx < K; ++kx) {
                const int tx = x + L::PAD - kx;
                if (tx < 0 || tx % L::STRIDE != 0 || tx / L::STRIDE >= WO) continue;
                const int oy = ty / L::STRIDE, ox = tx / L::STRIDE;
                real best;
                if (max_pool_argmax<L>(a, cg, plane, oy, ox, best) == y * W + x)
                    acc += ld(dy[(((i64)img * L::CIN + cg) * HO + oy) * WO + ox]);
            }
        }
        a.gact[L::DZ * a.n + i] = st(acc);
    }
}
