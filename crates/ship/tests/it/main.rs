//! Integration tests of parvm-ship.
