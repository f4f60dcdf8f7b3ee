use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        growth: 12,
    }
}

fn main() {}
