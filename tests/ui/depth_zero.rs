use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 0,
        growth: 12,
    }
}

fn main() {}
