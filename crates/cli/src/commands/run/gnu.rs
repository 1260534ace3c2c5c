//! GNU parallel's options that `parvm run` does not have: the usage error that says what to
//! use instead, so a command line copied from a GNU parallel script is not a dead end.

/// What to write instead of GNU parallel's option `option` (as typed, value attached or
/// not), when `parvm run` has no such option.
fn instead_of(option: &str) -> Option<&'static str> {
    let name = option.split_once('=').map_or(option, |(name, _)| name);
    let name = match name.strip_prefix("--") {
        Some(long) => long,
        // A short one: its letter, whatever is attached after it.
        None => name.strip_prefix('-')?.get(..1)?,
    };
    Some(match name {
        "pipe" | "pipepart" | "block" | "block-size" | "recend" | "recstart" => {
            "each value piped in is one case; standard input is not cut into blocks for the command"
        }
        "X" | "m" | "xargs" | "max-replace-args" => {
            "a case takes one value of each input source, or with -N N the next N values of the one source; pair the values of two sources with `:::+`"
        }
        "S" | "sshlogin" | "slf" | "sshloginfile" => {
            "it logs in to no host: start `parvm worker --connect HOST:PORT` on each and run with --transport tcp, or run under mpirun (docs/cluster.md)"
        }
        "u" | "ungroup" => "--line-buffer prints output as cases write it, in whole lines",
        "transfer" | "transferfile" | "trc" | "basefile" | "bf" | "return-file" => {
            "--map SRC=DST copies a case's input files into its task folder on whichever host runs it, and --return GLOB with --results DIR brings files back"
        }
        "tagstring" => "--tag prefixes each line a case prints with its values and a tab",
        "shuf" => "cases start in the order of their inputs",
        "onall" | "nonall" => {
            "--each-host runs every case, or the command alone, once on each host that has workers"
        }
        "nice" => "run parvm run itself under `nice`: the local workers and their cases inherit it",
        "memfree" | "load" | "noswap" | "delay" => {
            "a case starts whenever a worker is free; -j sets how many workers run cases"
        }
        "wd" | "workdir" => {
            "every case runs in its own task folder, removed after it; --startup-dir DIR starts it in a folder inside that one"
        }
        _ => return None,
    })
}

/// For a usage error of `parvm run` naming an option of GNU parallel's it does not have,
/// the error to print instead of clap's (whose tip would pass the option to the command):
/// what to use instead.
pub fn instead_of_gnu_parallel(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let ContextValue::String(option) = error.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let instead = instead_of(option)?;
    Some(format!(
        "error: parvm run has no `{option}` (an option of GNU parallel's): {instead}\n\nFor the options it has, see `parvm run --help`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_known_in_every_spelling_and_others_are_not() {
        for option in [
            "--pipe",
            "--block=10M",
            "-X",
            "-Xx",
            "--tagstring",
            "--onall",
            "--nice",
            "-S",
            "-Sserver",
            "--sshlogin=a",
            "-u",
            "--trc",
            "--wd",
        ] {
            assert!(instead_of(option).is_some(), "{option}");
        }
        for option in ["--bogus", "-Z", "-", "--", "--jobs", "-k", ""] {
            assert_eq!(instead_of(option), None, "{option}");
        }
    }
}
