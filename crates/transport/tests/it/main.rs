//! Integration tests of parvm-transport.
