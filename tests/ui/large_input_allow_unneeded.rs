use sparsenet::sparsenet;

sparsenet! {
    pub struct Net {
        input: [3, 64, 64],
        classes: 10,
        depth: 40,
        growth: 12,
        large_input: allow,
    }
}

fn main() {}
