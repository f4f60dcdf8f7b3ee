use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        stem: conv3x3,
    }
}

fn main() {}
