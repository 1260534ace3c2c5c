//! Integration tests of parvm-local-storage.
