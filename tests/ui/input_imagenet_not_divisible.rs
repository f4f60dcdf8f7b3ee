use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        input: [3, 100, 100],
        classes: 1000,
        units: [6, 12, 24, 16],
        growth: 32,
        bottleneck: true,
        stem: imagenet(64),
    }
}

fn main() {}
