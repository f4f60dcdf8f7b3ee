use sparsenet::sparsenet;

sparsenet! {
    /// A network that asks for a Debug the macro already writes.
    #[derive(Debug)]
    pub struct Net {
        classes: 10,
        depth: 40,
        growth: 12,
    }
}

fn main() {}
