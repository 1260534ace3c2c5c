//! The backend suites: `suite!(a, b)` makes each test function `fn a(backend: Backend)`
//! a test on every backend (memory, local, TCP, and MPI under `mpirun` with the `mpi`
//! feature); `process_suite!` on those whose workers are processes.

/// Runs each named test function on every backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(crate::harness::Backend::Memory) } )*
        }
        mod local {
            $( #[test] fn $name() { super::$name(crate::harness::Backend::Local) } )*
        }
        mod tcp {
            $( #[test] fn $name() { super::$name(crate::harness::Backend::Tcp) } )*
        }
        #[cfg(feature = "mpi")]
        mod mpi {
            $(
                #[test]
                fn $name() {
                    crate::mpirun::suite_test(
                        concat!(module_path!(), "::", stringify!($name)),
                        super::$name,
                    )
                }
            )*
        }
    };
}

/// As `suite!`, on the backends whose workers are processes (output is captured there).
macro_rules! process_suite {
    ($($name:ident),* $(,)?) => {
        mod local {
            $( #[test] fn $name() { super::super::$name(crate::harness::Backend::Local) } )*
        }
        mod tcp {
            $( #[test] fn $name() { super::super::$name(crate::harness::Backend::Tcp) } )*
        }
        #[cfg(feature = "mpi")]
        mod mpi {
            $(
                #[test]
                fn $name() {
                    crate::mpirun::suite_test(
                        concat!(module_path!(), "::", stringify!($name)),
                        super::super::$name,
                    )
                }
            )*
        }
    };
}
