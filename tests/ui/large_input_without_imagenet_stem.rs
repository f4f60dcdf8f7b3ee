use sparsenet::sparsenet;

// DenseNet-121 for 224x224 images, but without `stem: imagenet(64)`.
sparsenet! {
    pub struct DenseNet121 {
        style: paper,
        input: [3, 224, 224],
        classes: 1000,
        units: [6, 12, 24, 16],
        growth: 32,
        bottleneck: true,
        aggregation: dense,
    }
}

fn main() {}
