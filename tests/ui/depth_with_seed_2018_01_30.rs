use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        style: seed_2018_01_30,
        classes: 10,
        depth: 40,
        growth: 24,
    }
}

fn main() {}
