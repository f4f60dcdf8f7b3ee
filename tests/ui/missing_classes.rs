use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        depth: 40,
        growth: 12,
    }
}

fn main() {}
