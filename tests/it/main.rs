//! The façade's integration tests: the examples run as a user runs them.

mod failures;
