use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 41,
        growth: 12,
    }
}

fn main() {}
