use sparsenet::sparsenet;

sparsenet! {
    pub struct Net<T> {
        classes: 10,
        depth: 40,
    }
}

fn main() {}
