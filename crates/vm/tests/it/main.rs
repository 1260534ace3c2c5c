//! Integration tests of parvm-vm.
