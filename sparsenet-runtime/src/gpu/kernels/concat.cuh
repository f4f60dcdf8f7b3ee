// ---- reading the virtual concatenation -----------------------------------

// Source s's plane (image img, channel c) in the activation arena.
template <class L>
SN_DEVICE const stored* src_plane(const Args& a, int s, int img, int c) {
    return a.act + L::off(s) * a.n + ((i64)img * L::ch(s) + c) * (L::H * L::W);
}

// Concatenated channel cg -> (source, channel within it).
template <class L>
SN_DEVICE void locate(int cg, int& s, int& c) {
    s = 0;
    while (s + 1 < L::S && cg >= L::cbeg(s + 1)) ++s;
    c = cg - L::cbeg(s);
}

template <class L>
SN_DEVICE real pre_apply(const Args& a, int cg, real v) {
    if (!L::PRE) return v;
    real y = a.aux[L::PRE_AUX + cg] * v + a.aux[L::PRE_AUX + L::CIN + cg];
    // `<=` so that NaN passes through, as on the CPU (fmaxf would drop it).
    return (L::RELU && y <= (real)0) ? (real)0 : y;
}

// Where a node's output gradient lives: the logits' for the head.
template <class L>
SN_DEVICE const stored* out_grad(const Args& a) {
    return L::OUT_GRAD < 0 ? a.dlogits : a.gact + L::OUT_GRAD * a.n;
}
