use super::*;

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.731 + seed).sin() * 1.3)
        .collect()
}

#[test]
fn tilings() {
    let t = |h, w| Tiling::f2(&Direct::new(h, w, 3, 1)).map(|t| (t.rows, t.nt));
    assert_eq!(t(32, 32), Some((2, 32)));
    assert_eq!(t(16, 16), Some((4, 32)));
    assert_eq!(t(8, 32), Some((2, 32)));
    assert_eq!(t(24, 24), Some((4, 48)));
    assert_eq!(t(64, 48), Some((2, 48)));
    // Too few tiles for a block (8 x 8 has 16).
    assert_eq!(t(8, 8), None);
    // Odd sizes, rows of tiles not a multiple of 4, too few tile rows.
    assert_eq!(t(7, 8), None);
    assert_eq!(t(28, 28), None);
    assert_eq!(t(4, 8), None);
    assert_eq!(t(6, 8), None);
    // Not 3x3 pad 1, or the pointwise layout.
    assert_eq!(Tiling::f2(&Direct::new(32, 32, 3, 0)), None);
    assert_eq!(Tiling::f2(&Direct::new(32, 32, 5, 2)), None);
    assert_eq!(Tiling::f2(&Direct::pointwise(32, 32, 4)), None);
    // 4x4 tiles: (tile rows, tiles) per block.
    let t = |h, w| Tiling::f4(&Direct::new(h, w, 3, 1)).map(|t| (t.rows, t.nt));
    assert_eq!(t(32, 32), Some((2, 16)));
    assert_eq!(t(16, 16), Some((4, 16)));
    assert_eq!(t(8, 32), Some((2, 16)));
    assert_eq!(t(64, 48), Some((2, 24)));
    assert_eq!(t(16, 64), Some((1, 16)));
    // Tile rows not whole halves of vectors, too few tiles, odd sizes.
    assert_eq!(t(24, 24), None);
    assert_eq!(t(8, 16), None);
    assert_eq!(t(4, 32), None);
    assert_eq!(t(30, 32), None);
    // Forward convolutions take them where allowed.
    let d = Direct::new(16, 16, 3, 1);
    assert_eq!(Tiling::forward(&d, true, 1).map(|t| t.m), Some(4));
    assert_eq!(Tiling::forward(&d, false, 1).map(|t| t.m), Some(2));
    // Split over threads: 4x4 tiles where each thread gets a block.
    assert_eq!(Tiling::forward(&d, true, 2).map(|t| t.m), Some(2));
    let d32 = Direct::new(32, 32, 3, 1);
    assert_eq!(Tiling::forward(&d32, true, 2).map(|t| t.m), Some(4));
    let d = Direct::new(24, 24, 3, 1);
    assert_eq!(Tiling::forward(&d, true, 1).map(|t| t.m), Some(2));
}

#[test]
fn the_cache_serves_a_transform_only_for_the_same_weights() {
    let (cout, cin) = (4, 3);
    let mut wt = values(cout * cin * 9, 0.7);
    let a = cached_transform(&wt, cout, cin, 2);
    assert_eq!(a.as_slice(), &transform_weights(&wt, cout, cin, 2).0[..]);
    // The same values again (from another buffer too): the same entry.
    assert!(Arc::ptr_eq(&a, &cached_transform(&wt, cout, cin, 2)));
    assert!(Arc::ptr_eq(
        &a,
        &cached_transform(&wt.clone(), cout, cin, 2)
    ));
    // Weights changed in place (as an optimiser step does): recomputed.
    wt[5] += 1.0;
    let b = cached_transform(&wt, cout, cin, 2);
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(b.as_slice(), &transform_weights(&wt, cout, cin, 2).0[..]);
    // The same weights for 4x4 tiles: another transform.
    let f4 = cached_transform(&wt, cout, cin, 4);
    assert_eq!(f4.as_slice(), &transform_weights(&wt, cout, cin, 4).0[..]);
    assert_eq!(f4.len(), 36 * cout * cin);
    // The same values as another shape: not served either.
    let c = cached_transform(&wt, cin, cout, 2);
    assert_eq!(c.as_slice(), &transform_weights(&wt, cin, cout, 2).0[..]);
}

#[test]
fn within_a_pass_the_cache_trusts_the_buffer_it_compared() {
    let (cout, cin) = (4, 3);
    let mut wt = values(cout * cin * 9, 0.9);
    let entry = |wt: &[f32], pass: u64| CachedTransform {
        weight: wt.to_vec(),
        cout,
        m: 2,
        u: Arc::new(Vec::new()),
        seen_at: wt.as_ptr() as usize,
        seen_in: pass,
    };
    let e = entry(&wt, 7);
    assert!(e.serves(&wt, cout, 2, 7) && e.serves(&wt, cout, 2, 8));
    assert!(!e.serves(&wt, cin, 2, 7), "another shape");
    // Changed where the sample looks (the first element): caught in
    // the pass too. Elsewhere: caught outside the pass that compared
    // the buffer in full, or by another buffer.
    wt[0] += 1.0;
    assert!(!e.serves(&wt, cout, 2, 7));
    wt[0] -= 1.0;
    wt[5] += 1.0;
    assert!(!e.serves(&wt, cout, 2, 8) && !e.serves(&wt, cout, 2, 0));
    assert!(!e.serves(&wt.clone(), cout, 2, 7));
    // A buffer at another address, equal in value: compared in full.
    let other = entry(&values(cout * cin * 9, 0.9), 7);
    assert!(other.serves(&values(cout * cin * 9, 0.9), cout, 2, 7));
}
