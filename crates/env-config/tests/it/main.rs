//! Integration tests of parvm-env-config.
