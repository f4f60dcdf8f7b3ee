use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        num_classes: 10,
        growth_rate: 32,
        block_config: [6, 12, 24, 16],
    }
}

fn main() {}
