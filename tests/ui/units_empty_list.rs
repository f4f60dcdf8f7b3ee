use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        units: [],
    }
}

fn main() {}
