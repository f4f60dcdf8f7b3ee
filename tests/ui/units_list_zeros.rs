use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        units: [6, 0, 0],
    }
}

fn main() {}
