use sparsenet::sparsenet;

sparsenet! {
    pub struct Net { classes: 10, depth: 40, growth: 12 }
}

sparsenet! {
    pub struct Net { classes: 100, depth: 40, growth: 12 }
}

fn main() {}
