// ---- optimiser ----------------------------------------------------------------

// SGD with momentum, optional Nesterov and weight decay, as the CPU optimiser.
template <int LEN>
SN_DEVICE void sgd_step(const Args& a) {
    const real lr = a.hyper[0], mom = a.hyper[1], wd = a.hyper[2];
    const bool nesterov = a.hyper[3] != (real)0;
    real* p = a.params;
    SN_FOR_EACH(i, LEN) {
        real g = a.grads[i];
        if (wd != (real)0) g = g + wd * p[i];
        const real v = mom * a.velocity[i] + g;
        a.velocity[i] = v;
        p[i] = p[i] - lr * (nesterov ? g + mom * v : v);
    }
}
