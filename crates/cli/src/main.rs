//! The `parvm` command-line tool (being written).

fn main() {}
