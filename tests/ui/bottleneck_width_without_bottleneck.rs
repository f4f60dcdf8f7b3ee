use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        bottleneck_width: 4,
    }
}

fn main() {}
