//! parvm-env-config (being written).
