//! Load and comparison benchmarks.

fn main() {}
