use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        input: [32, 32],
        classes: 10,
        depth: 40,
    }
}

fn main() {}
