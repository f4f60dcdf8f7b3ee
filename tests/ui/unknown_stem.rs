use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        stem: conv7x7(24),
    }
}

fn main() {}
