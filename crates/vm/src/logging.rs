//! parvm's logs: `tracing`, filtered by `PARVM_LOG` or a PyOPUS-style debug level.

/// Installs a stderr subscriber unless the program installed its own.
pub(crate) fn init(filter: Option<&str>, debug: Option<u8>) {
    let filter = filter_or_warn(filter, debug);
    let Ok(filter) = tracing_subscriber::EnvFilter::try_new(&filter) else {
        eprintln!("parvm: ignoring PARVM_LOG=`{filter}`: not a valid tracing filter");
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The filter to pass on to workers, when one was asked for.
pub(crate) fn filter(filter: Option<&str>, debug: Option<u8>) -> Option<String> {
    (filter.is_some() || debug.is_some()).then(|| filter_or_warn(filter, debug))
}

fn filter_or_warn(filter: Option<&str>, debug: Option<u8>) -> String {
    match (filter, debug) {
        (Some(filter), _) => filter.to_owned(),
        (None, Some(level)) => match level {
            0 => "warn",
            1 => "warn,parvm_vm=info,parvm_transport=info",
            2 => "warn,parvm_vm=debug,parvm_transport=debug,parvm_local_storage=debug,parvm_mirror_fs=debug",
            _ => "warn,parvm_vm=trace,parvm_transport=trace,parvm_local_storage=trace,parvm_mirror_fs=trace",
        }
        .to_owned(),
        // Workers that leave in order (finalize) are logged by the transport at debug
        // level; only a worker lost unexpectedly is a warning.
        (None, None) => "warn".to_owned(),
    }
}
