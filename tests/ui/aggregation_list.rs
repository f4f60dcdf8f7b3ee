use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        aggregation: [1, 2, 4],
    }
}

fn main() {}
