//! Integration tests of parvm-ship: one binary, one module per topic.

mod manifest;
mod scan;
