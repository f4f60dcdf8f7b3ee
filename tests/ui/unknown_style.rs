use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        style: densenet,
        classes: 10,
        depth: 40,
    }
}

fn main() {}
