use sparsenet::sparsenet;

sparsenet! {}

fn main() {}
