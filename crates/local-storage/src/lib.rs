//! parvm-local-storage (being written).
