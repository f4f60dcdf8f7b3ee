//! The topology rule: which earlier outputs of its block a layer reads,
//! following the declared [`Aggregation`]. Concatenation order is the seed
//! notebook's, newest first (l-1, l-2, l-4, ...).

use super::BufId;
use crate::config::Aggregation;

/// Offsets that a layer at index `j` of its block reads (index 0 is the
/// block input), smallest first: newest source first.
pub fn offsets(aggregation: &Aggregation, j: usize) -> Vec<usize> {
    match aggregation {
        Aggregation::Exponential(c) => {
            let mut out = Vec::new();
            let mut i = 1;
            while i <= j {
                out.push(i);
                i *= c;
            }
            out
        }
        Aggregation::Dense => (1..=j).collect(),
        Aggregation::Offsets(list) => list.iter().copied().filter(|&o| o <= j).collect(),
    }
}

/// The buffers layer `j` reads, where `block[i]` is layer `i`'s output
/// (`block[0]` the block input): the block's output is what a layer
/// `j = units + 1` would read.
pub fn sources(aggregation: &Aggregation, block: &[BufId], j: usize) -> Vec<BufId> {
    offsets(aggregation, j)
        .iter()
        .map(|&o| block[j - o])
        .collect()
}
