use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        classes: 10,
        depth: 40,
        bn_eps: -1e-5,
    }
}

fn main() {}
