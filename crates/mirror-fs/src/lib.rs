//! parvm-mirror-fs (being written).
