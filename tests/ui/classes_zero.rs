use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 0,
        depth: 40,
        growth: 12,
    }
}

fn main() {}
