use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        growth: 0,
        dropout: 1.5,
    }
}

fn main() {}
