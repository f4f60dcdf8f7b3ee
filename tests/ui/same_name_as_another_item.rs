use sparsenet::sparsenet;

pub struct Net;

sparsenet! {
    pub struct Net { classes: 10, depth: 40, growth: 12 }
}

fn main() {}
