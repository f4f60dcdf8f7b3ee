use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        aggregation: exponential(1),
    }
}

fn main() {}
