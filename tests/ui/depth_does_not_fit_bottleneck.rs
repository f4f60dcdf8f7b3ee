use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 42,
        growth: 12,
        bottleneck: true,
    }
}

fn main() {}
