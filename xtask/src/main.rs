//! parvm automation (being written).

fn main() {}
