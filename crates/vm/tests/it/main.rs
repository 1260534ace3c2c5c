//! Integration tests of parvm-vm. The behaviour suite runs on every backend; faults that
//! need real processes run on the local backend only.

#[path = "../../src/bin/parvm-vm-testprog/tasks.rs"]
mod tasks;

mod behaviour;
mod harness;
mod processes;
