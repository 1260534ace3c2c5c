//! Integration tests of parvm-mirror-fs.
