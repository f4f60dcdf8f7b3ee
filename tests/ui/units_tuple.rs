use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        units: (6, 12, 24),
        growth: 12,
    }
}

fn main() {}
