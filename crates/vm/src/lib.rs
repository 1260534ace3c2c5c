//! parvm-vm (being written).
