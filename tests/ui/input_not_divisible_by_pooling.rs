use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        input: [3, 30, 30],
        classes: 10,
        depth: 40,
    }
}

fn main() {}
