use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        aggregation: offsets(2, 4, 8),
    }
}

fn main() {}
