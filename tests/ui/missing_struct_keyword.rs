use sparsenet::sparsenet;

sparsenet! {
    pub Net {
        classes: 10,
        depth: 40,
    }
}

fn main() {}
