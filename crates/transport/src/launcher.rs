//! Whether `mpirun` (or another MPI launcher) started this process, and as which rank,
//! read from the variables launchers set: no MPI library needed, so it is built without
//! the `mpi` feature and a VM can decide before it initialises MPI (or to say MPI is not
//! built in).
//!
//! Owns the launchers' variable names and the order they are read in. Must not know MPI
//! itself, nor parvm's own variables (`PARVM_TRANSPORT` is read by the `mpi` backend and
//! the VM's configuration).

use crate::Rank;

/// The variables a launcher sets in the processes it starts: Open MPI's `mpirun`
/// (`OMPI_COMM_WORLD_SIZE`), MPICH's Hydra and other PMI launchers (`PMI_SIZE`,
/// `PMI_RANK`), and PMIx launchers such as Open MPI 5 or `srun --mpi=pmix` (`PMIX_RANK`).
pub const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"];

/// The variables that hold this process's rank, set by the same launchers, in the order
/// they are read.
pub const RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];

/// The variables that hold the number of ranks of the job, in the order they are read.
pub const SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// Whether this process was started by `mpirun`/`mpiexec` (Open MPI, MPICH or another
/// PMI/PMIx launcher), judged from the environment without initialising MPI.
#[must_use]
pub fn launched_by_mpirun() -> bool {
    launched_by_mpirun_in(&env)
}

/// The rank the launcher gave this process, read from the environment without
/// initialising MPI; `None` when no launcher set one (or it is not a number).
#[must_use]
pub fn launch_rank() -> Option<Rank> {
    launch_rank_in(&env)
}

/// The number of ranks when an MPI launcher started this process, read from its
/// environment; `None` when no launcher did. A launcher that sets a rank but no size this
/// crate knows counts as 2 ranks (several: there may be workers to serve).
#[must_use]
pub fn launch_size() -> Option<usize> {
    launch_size_in(&env)
}

/// One variable of this process's environment, when it is set and UTF-8.
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Variables are read through `get`, so the rules are tested without touching the
/// process's environment.
fn launched_by_mpirun_in(get: &dyn Fn(&str) -> Option<String>) -> bool {
    LAUNCHER_VARS.iter().any(|var| get(var).is_some())
}

fn launch_rank_in(get: &dyn Fn(&str) -> Option<String>) -> Option<Rank> {
    RANK_VARS
        .iter()
        .find_map(|var| get(var)?.trim().parse().ok())
}

fn launch_size_in(get: &dyn Fn(&str) -> Option<String>) -> Option<usize> {
    let size = SIZE_VARS
        .iter()
        .find_map(|var| get(var)?.trim().parse::<usize>().ok());
    match size {
        Some(size) => Some(size),
        None if RANK_VARS.iter().any(|var| get(var).is_some()) => Some(2),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn launchers_are_recognised_by_their_variables() {
        // (environment, launched, rank, size)
        type Row = (
            &'static [(&'static str, &'static str)],
            bool,
            Option<Rank>,
            Option<usize>,
        );
        let rows: [Row; 8] = [
            (&[], false, None, None),
            (
                &[("OMPI_COMM_WORLD_SIZE", "3"), ("OMPI_COMM_WORLD_RANK", "2")],
                true,
                Some(2),
                Some(3),
            ),
            (
                &[("PMI_SIZE", "4"), ("PMI_RANK", " 1 ")],
                true,
                Some(1),
                Some(4),
            ),
            (&[("PMIX_RANK", "0")], true, Some(0), Some(2)),
            (
                &[("PMIX_RANK", "0"), ("PMIX_SIZE", "1")],
                true,
                Some(0),
                Some(1),
            ),
            // PMIx is read before PMI when both are set.
            (
                &[("PMI_RANK", "1"), ("PMIX_RANK", "5")],
                true,
                Some(5),
                Some(2),
            ),
            // A rank that is not a number is no rank, but the launcher is still there.
            (&[("PMI_RANK", "x")], true, None, Some(2)),
            // The size alone tells of a launcher, not of a rank.
            (&[("OMPI_COMM_WORLD_SIZE", "1")], true, None, Some(1)),
        ];
        for (vars, launched, rank, size) in rows {
            let get = lookup(vars);
            assert_eq!(launched_by_mpirun_in(&get), launched, "{vars:?}");
            assert_eq!(launch_rank_in(&get), rank, "{vars:?}");
            assert_eq!(launch_size_in(&get), size, "{vars:?}");
        }
    }
}
