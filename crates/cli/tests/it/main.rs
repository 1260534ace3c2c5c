//! Integration tests of the parvm command-line tool.
