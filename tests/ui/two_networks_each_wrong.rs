use sparsenet::sparsenet;

sparsenet! {
    pub struct First {
        classes: 10,
        depth: 41,
    }

    pub struct Second {
        classes: 10,
        depth: 40,
        style: paper_2017,
    }
}

fn main() {}
