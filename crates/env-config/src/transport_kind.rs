//! The transports `PARVM_TRANSPORT` may name. It owns the names and their parsing (blanks
//! trimmed, any case); it must not know how a transport is chosen when the variable is
//! unset (the VM decides that).

use crate::{Error, TRANSPORT_VAR};

/// Which transport carries messages between the spawner and the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Workers are processes on this machine, over Unix sockets.
    Local,
    /// Workers connect over TCP, authenticated by a shared secret.
    Tcp,
    /// Workers are MPI ranks started by `mpirun`.
    Mpi,
}

impl TransportKind {
    /// The name used in `PARVM_TRANSPORT`.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Local => "local",
            TransportKind::Tcp => "tcp",
            TransportKind::Mpi => "mpi",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        match value.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(TransportKind::Local),
            "tcp" => Ok(TransportKind::Tcp),
            "mpi" => Ok(TransportKind::Mpi),
            _ => Err(Error::UnknownTransport {
                variable: TRANSPORT_VAR,
                value: value.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_case_insensitively() {
        assert_eq!("MPI".parse::<TransportKind>().unwrap(), TransportKind::Mpi);
        assert_eq!(" tcp".parse::<TransportKind>().unwrap(), TransportKind::Tcp);
        assert!("pvm".parse::<TransportKind>().is_err());
    }
}
