use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        aggregation: offsets(1, 4, 2),
    }
}

fn main() {}
