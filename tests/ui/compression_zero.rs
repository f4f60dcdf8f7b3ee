use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        style: paper,
        classes: 10,
        depth: 40,
        bottleneck: true,
        compression: 0,
    }
}

fn main() {}
