//! Environment variables the spawner forwards to its workers
//! ([`RuntimeBuilder::forward_env`](crate::RuntimeBuilder::forward_env), `PARVM_FORWARD_ENV`).
//!
//! The spawner reads the values once at start and sends them to every worker, before its
//! first task, in a [`ToWorker::Env`](crate::wire::ToWorker::Env) frame. A worker sets
//! them on every command it runs, and a worker that owns its process also sets them in
//! that process's environment, so registered tasks see them with `std::env::var`.
//!
//! Setting a process's environment is `unsafe` since Rust 2024 (C code in other threads may
//! read it at the same moment); this is the one module of the crate that does it.
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde_bytes::ByteBuf;

use crate::Error;

/// The variable listing names to forward, separated by commas or colons (read by
/// env-config: [`Config::forward_env`](parvm_env_config::Config::forward_env)).
pub use parvm_env_config::FORWARD_ENV_VAR;

/// One forwarded variable as it travels: name and value bytes.
pub(crate) type Var = (ByteBuf, ByteBuf);

/// Checks `names` and reads their values here; a name not set here is left out (with a
/// warning: the workers keep their own value, if any).
///
/// # Errors
/// [`Error::ForwardEnv`] for a name that cannot be an environment variable, or one parvm
/// reads itself when a worker starts (`PARVM_*`, `PARALLEL_*`), before forwarded values
/// arrive.
pub(crate) fn collect(names: &[String]) -> Result<Vec<Var>, Error> {
    let mut vars: Vec<Var> = Vec::new();
    for name in names {
        check_name(name)?;
        if vars
            .iter()
            .any(|(known, _)| known.as_slice() == name.as_bytes())
        {
            continue;
        }
        match std::env::var_os(name) {
            Some(value) if value.as_bytes().contains(&0) => {
                return Err(Error::ForwardEnv {
                    name: name.clone(),
                    reason: "its value holds a NUL byte".to_owned(),
                });
            }
            Some(value) => vars.push((
                ByteBuf::from(name.as_bytes().to_vec()),
                ByteBuf::from(value.into_vec()),
            )),
            None => tracing::warn!(
                "not forwarding `{name}` to the workers: it is not set on the spawner; workers keep their own value, if any"
            ),
        }
    }
    Ok(vars)
}

fn check_name(name: &str) -> Result<(), Error> {
    let refuse = |reason: &str| {
        Err(Error::ForwardEnv {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() || name.contains(['=', '\0']) {
        return refuse("a variable name must be non-empty and hold neither `=` nor a NUL byte");
    }
    if name.starts_with("PARVM_") || name.starts_with("PARALLEL_") {
        return refuse(
            "parvm reads it when a worker starts, before forwarded variables arrive; set it in the worker's own environment where it is started",
        );
    }
    Ok(())
}

/// The forwarded variables as a worker uses them; malformed ones (from a peer that is not
/// this program) are dropped with a warning.
pub(crate) fn decode(vars: Vec<Var>) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let (name, value) = (name.into_vec(), value.into_vec());
            let good = !name.is_empty()
                && !name.contains(&b'=')
                && !name.contains(&0)
                && !value.contains(&0);
            if !good {
                tracing::warn!(
                    name = %String::from_utf8_lossy(&name),
                    "dropping a forwarded variable that cannot be set"
                );
            }
            good.then(|| (OsString::from_vec(name), OsString::from_vec(value)))
        })
        .collect()
}

/// Sets `vars` in this process's environment; only for a worker that owns its process.
pub(crate) fn set_in_process(vars: &[(OsString, OsString)]) {
    for (name, value) in vars {
        if std::env::var_os(name).as_deref() == Some(value.as_os_str()) {
            // Local workers inherited it already.
            continue;
        }
        tracing::debug!(name = %OsStr::to_string_lossy(name), "setting a forwarded variable");
        // SAFETY: `decode` let through only names without `=` or NUL and values without NUL,
        // so `set_var` does not panic. The worker's spawn loop applies the frame before its
        // first task, from the thread that runs tasks; the other threads of a worker process
        // (transport readers, output forwarding) only read and write descriptors and never
        // read the environment, so no `getenv` runs concurrently.
        unsafe { std::env::set_var(name, value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parvm_reads_itself_are_refused() {
        for name in ["PARVM_LOG", "PARALLEL_LOCAL_STORAGE", "A=B", ""] {
            let error = collect(&[name.to_owned()]).unwrap_err();
            assert!(
                matches!(&error, Error::ForwardEnv { name: n, .. } if n == name),
                "{error:?}"
            );
        }
    }

    #[test]
    fn unset_names_are_left_out() {
        let vars = collect(&["TESTFWD_SURELY_UNSET_NAME".to_owned()]).unwrap();
        assert!(vars.is_empty());
    }

    #[test]
    fn malformed_frames_are_dropped() {
        let vars = vec![
            (
                ByteBuf::from(b"GOOD".to_vec()),
                ByteBuf::from(b"v".to_vec()),
            ),
            (ByteBuf::from(b"A=B".to_vec()), ByteBuf::from(b"v".to_vec())),
            (
                ByteBuf::from(b"NUL".to_vec()),
                ByteBuf::from(b"a\0b".to_vec()),
            ),
        ];
        let decoded = decode(vars);
        assert_eq!(decoded, vec![(OsString::from("GOOD"), OsString::from("v"))]);
    }
}
