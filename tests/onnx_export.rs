//! ONNX export checked by a real runtime: each network's exported file is
//! validated by `onnx.checker` (full check) and run by onnxruntime (from
//! PyPI, which `.ci/run` installs under `target/onnxruntime`); its logits
//! must equal our `infer`'s within 1e-5 of the largest logit, on random
//! weights with BatchNorms that are not the identity.

use rand::{Rng, SeedableRng};
use sparsenet::prelude::*;
use sparsenet::runtime::onnx::{save_onnx, to_onnx_bytes, OnnxError};
use sparsenet::runtime::Store;
use sparsenet::zoo::*;
use std::path::{Path, PathBuf};

sparsenet! {
    /// A DenseNet with the ImageNet stem (7x7/2 conv, BN-ReLU, 3x3/2 max-pool).
    struct SmallDenseImagenet {
        style: paper, input: [3, 64, 64], classes: 20, units: [3, 4], growth: 8,
        bottleneck: true, aggregation: dense, stem: imagenet(16),
    }
    /// Explicit offsets, grayscale, no bottleneck.
    struct Offsets { classes: 7, input: [1, 16, 16], units: [5, 5], growth: 4, aggregation: offsets(1, 3) }
    /// Dropout (off in inference, absent from the graph).
    struct WithDropout { style: paper, input: [3, 16, 16], classes: 5, depth: 22, growth: 6, bottleneck: true, dropout: 0.2 }
}

/// A model whose BatchNorms all differ from the identity.
fn randomised<M: Model<f32>>(seed: u64) -> M {
    let mut m = M::new(seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (params, state) = m.stores_mut();
    for t in M::tensors() {
        let range = t.offset..t.offset + t.len();
        let bn = t.shape.len() == 1 && t.name.contains(".bn");
        match t.store {
            Store::Param if bn => params[range]
                .iter_mut()
                .for_each(|v| *v += rng.gen_range(-0.3..0.3)),
            Store::State if t.name.ends_with("running_var") => state[range]
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(0.5..1.5)),
            Store::State => state[range]
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(-0.2..0.2)),
            _ => {}
        }
    }
    m
}

struct Case {
    name: &'static str,
    dir: PathBuf,
    shape: [usize; 4],
    want: Vec<f32>,
}

fn export<M: Model<f32>>(dir: &Path, batch: usize, cases: &mut Vec<Case>) {
    let m: M = randomised(cases.len() as u64 + 1);
    let [c, h, w] = M::INPUT;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let x = Array4::from_shape_fn((batch, c, h, w), |_| rng.gen_range(-1.0f32..1.0));
    let want = m.infer(x.view()).unwrap();
    let sub = dir.join(M::NAME);
    std::fs::create_dir(&sub).unwrap();
    save_onnx(&m, &sub.join("model.onnx")).unwrap();
    // Deterministic: the same model gives the same bytes.
    assert_eq!(
        std::fs::read(sub.join("model.onnx")).unwrap(),
        to_onnx_bytes(&m).unwrap()
    );
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(sub.join("input.bin"), bytes).unwrap();
    cases.push(Case {
        name: M::NAME,
        dir: sub,
        shape: [batch, c, h, w],
        want: want.iter().copied().collect(),
    });
}

/// `target/onnxruntime`, where `.ci/run` installs onnxruntime and onnx.
fn onnxruntime_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("target").join("onnxruntime");
    assert!(
        path.join("onnxruntime").is_dir(),
        "onnxruntime is not installed in {}: `bash .ci/run` installs it (python3 -m pip install \
         --target target/onnxruntime onnxruntime onnx)",
        path.display()
    );
    path
}

#[test]
fn exported_networks_give_our_logits_in_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cases = Vec::new();
    export::<FashionSparseNet>(dir, 3, &mut cases);
    export::<SeedV2Depth40>(dir, 3, &mut cases);
    export::<SeedV1Notebook>(dir, 3, &mut cases);
    export::<SparseNet40>(dir, 2, &mut cases);
    export::<SparseNetBc100>(dir, 2, &mut cases);
    export::<SeedV2Bc100>(dir, 2, &mut cases);
    export::<DenseNet40>(dir, 2, &mut cases);
    export::<SparseNetBc100Cifar100>(dir, 2, &mut cases);
    export::<SmallDenseImagenet>(dir, 2, &mut cases);
    export::<Offsets>(dir, 3, &mut cases);
    export::<WithDropout>(dir, 2, &mut cases);

    let jobs: Vec<String> = cases
        .iter()
        .map(|c| {
            format!(
                r#"{{"model": "{}", "input": "{}", "output": "{}", "shape": {:?}}}"#,
                c.dir.join("model.onnx").display(),
                c.dir.join("input.bin").display(),
                c.dir.join("logits.bin").display(),
                c.shape
            )
        })
        .collect();
    let jobs_file = dir.join("jobs.json");
    std::fs::write(&jobs_file, format!("[{}]", jobs.join(", "))).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/onnx_run.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&jobs_file)
        .env("PYTHONPATH", onnxruntime_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnxruntime failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    for c in &cases {
        let got: Vec<f32> = std::fs::read(c.dir.join("logits.bin"))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got.len(), c.want.len(), "{}", c.name);
        let scale = c.want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = got
            .iter()
            .zip(&c.want)
            .map(|(a, b)| (a - b).abs() / scale)
            .fold(0f32, f32::max);
        println!(
            "{}: onnxruntime vs infer, worst {worst:.2e} of the largest logit ({scale:.3})",
            c.name
        );
        assert!(worst <= 1e-5, "{}: {worst:e}", c.name);
    }
}

#[test]
fn a_non_finite_weight_is_not_exported() {
    let mut m = Offsets::<f32>::new(0);
    m.params_mut()[7] = f32::NAN;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let e = save_onnx(&m, &path).unwrap_err();
    assert!(matches!(e, OnnxError::NonFinite { index: 7, .. }), "{e}");
    assert!(!path.exists());
}
