use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 1,
        depth: 40,
        growth: 12,
    }
}

fn main() {}
