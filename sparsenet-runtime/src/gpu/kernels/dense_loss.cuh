// The head: global average pool and the dense classifier, the loss, and
// their backward.

// ---- forward ----------------------------------------------------------------

// Global average of the transformed channel cg of one image.
template <class L>
SN_DEVICE real gap_feature(const Args& a, int img, int cg) {
    int s, c;
    locate<L>(cg, s, c);
    const stored* plane = src_plane<L>(a, s, img, c);
    real sum = (real)0;
    SN_NO_UNROLL for (int p = 0; p < L::H * L::W; ++p) sum += pre_apply<L>(a, cg, ld(plane[p]));
    return sum * ((real)1 / (L::H * L::W));
}

// Global average pool and the dense classifier: one thread per logit.
template <class L>
SN_DEVICE void gap_dense_forward(const Args& a) {
    SN_FOR_EACH(i, (i64)a.n * L::CLASSES) {
        const int k = (int)(i % L::CLASSES);
        const int img = (int)(i / L::CLASSES);
        real acc = (real)0;
        SN_NO_UNROLL for (int cg = 0; cg < L::CIN; ++cg)
            acc += gap_feature<L>(a, img, cg) * a.params[L::WEIGHT + (i64)k * L::CIN + cg];
        a.logits[i] = acc + a.params[L::BIAS + k];
    }
}

// ---- loss -------------------------------------------------------------------

// Softmax cross-entropy with label smoothing, as the CPU loss: per image the
// loss, whether the (first) argmax is the label, and d loss / d logits of the
// batch mean.
template <int CLASSES>
SN_DEVICE void softmax_cross_entropy(const Args& a) {
    SN_FOR_EACH(img, a.n) {
        const real* row = a.logits + img * CLASSES;
        stored* g = a.dlogits + img * CLASSES;
        const int label = a.labels[img];
        const real eps = a.hyper[4];
        int best = 0;
        real mx = row[0];
        for (int j = 1; j < CLASSES; ++j)
            if (row[j] > mx) {
                mx = row[j];
                best = j;
            }
        // The exponentials are summed here and recomputed below (the same
        // values), so that d loss / d logits may be stored narrower.
        real sum = (real)0;
        SN_NO_UNROLL for (int j = 0; j < CLASSES; ++j) sum += exp(row[j] - mx);
        const real lse = mx + log(sum);
        real loss = ((real)1 - eps) * (lse - row[label]);
        const real off = eps / CLASSES;
        if (eps > (real)0) {
            real smooth = (real)0;
            SN_NO_UNROLL for (int j = 0; j < CLASSES; ++j) smooth += lse - row[j];
            loss += off * smooth;
        }
        const real on = ((real)1 - eps) + off;
        const real inv_n = (real)1 / a.n;
        SN_NO_UNROLL for (int j = 0; j < CLASSES; ++j) {
            const real p = exp(row[j] - mx) / sum;
            g[j] = st((p - (j == label ? on : off)) * inv_n);
        }
        a.losses[img] = loss;
        a.losses[a.n + img] = best == label ? (real)1 : (real)0;
    }
}

// ---- backward ---------------------------------------------------------------

template <class L>
SN_DEVICE void gap_dense_backward_input(const Args& a) {
    constexpr int HW = L::H * L::W;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HW) {
        const Nchw e = nchw(i, L::CIN, 1, HW);
        const int cg = e.c, img = e.img;
        real acc = (real)0;
        SN_NO_UNROLL for (int k = 0; k < L::CLASSES; ++k)
            acc += ld(a.dlogits[img * L::CLASSES + k]) * a.params[L::WEIGHT + (i64)k * L::CIN + cg];
        a.gact[L::DZ * a.n + i] = st(acc * ((real)1 / HW));
    }
}

// Dense weight and bias gradients: one thread per weight, then per bias.
template <class L>
SN_DEVICE void gap_dense_backward_weight(const Args& a) {
    constexpr i64 NW = (i64)L::CLASSES * L::CIN;
    SN_FOR_EACH(i, NW + L::CLASSES) {
        if (i >= NW) {
            const int k = (int)(i - NW);
            real sum = (real)0;
            SN_NO_UNROLL for (int img = 0; img < a.n; ++img) sum += ld(a.dlogits[img * L::CLASSES + k]);
            a.grads[L::BIAS + k] = sum;
            continue;
        }
        const int cg = (int)(i % L::CIN);
        const int k = (int)(i / L::CIN);
        real sum = (real)0;
        SN_NO_UNROLL for (int img = 0; img < a.n; ++img)
            sum += ld(a.dlogits[img * L::CLASSES + k]) * gap_feature<L>(a, img, cg);
        a.grads[L::WEIGHT + i] = sum;
    }
}
