use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        input: (3, 32, 32),
        classes: 10,
        depth: 40,
        growth: 12,
    }
}

fn main() {}
