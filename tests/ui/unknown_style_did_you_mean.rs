use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        style: seed_2018_02_02,
        classes: 10,
        depth: 40,
    }
}

fn main() {}
