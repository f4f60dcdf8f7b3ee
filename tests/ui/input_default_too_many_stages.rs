use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        blocks: 7,
        units: 2,
    }
}

fn main() {}
