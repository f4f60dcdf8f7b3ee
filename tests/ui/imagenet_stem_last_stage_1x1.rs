use sparsenet::sparsenet;

sparsenet! {
    // DenseNet-121's layout on CIFAR-sized input: the ImageNet stem takes
    // 32x32 to 8x8, and three transitions leave the last stage at 1x1.
    pub struct Net {
        input: [3, 32, 32],
        classes: 10,
        units: [6, 12, 24, 16],
        growth: 32,
        bottleneck: true,
        stem: imagenet(64),
    }
}

fn main() {}
