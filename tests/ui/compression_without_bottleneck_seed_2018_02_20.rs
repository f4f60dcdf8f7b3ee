use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        style: seed_2018_02_20,
        classes: 10,
        depth: 40,
        compression: 0.5,
    }
}

fn main() {}
