// The input batch (the first activation) and its labels from the dataset
// on the device: image i is dataset image picks[4i], read at row y + dy and
// column (flip ? W-1-x : x) + dx, a pixel outside the image reading as 0;
// then the normalisation table. The CPU pipeline's arithmetic (a table
// lookup, data/transform.rs apply_lut), so equal to it to the bit.
template <int C, int H, int W>
SN_DEVICE void augment_input(const Args& a) {
    SN_FOR_EACH(i, (i64)a.n * C * H * W) {
        const Nchw e = nchw(i, C, H, W);
        const int* p = a.picks + 4 * e.img;
        const int sy = e.y + p[1];
        const int sx = (p[3] ? W - 1 - e.x : e.x) + p[2];
        int v = 0;
        if (sy >= 0 && sy < H && sx >= 0 && sx < W)
            v = a.images[((i64)p[0] * C + e.c) * (H * W) + sy * W + sx];
        a.act[i] = st(a.lut[e.c * 256 + v]);
        if (e.c == 0 && e.y == 0 && e.x == 0) a.labels[e.img] = a.dataset_labels[p[0]];
    }
}
