use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        input: [3, 96, 96],
        classes: 10,
        depth: 40,
        growth: 12,
        large_input: true,
    }
}

fn main() {}
