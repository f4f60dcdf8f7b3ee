use sparsenet::sparsenet;

sparsenet! {
    #[derive(PartialEq)]
    pub struct Net {
        classes: 10,
        depth: 40,
        growth: 12,
    }
}

fn main() {}
