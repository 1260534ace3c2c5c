//! Simulated hosts with storage of their own (`RuntimeBuilder::simulated_host_config`): a
//! mirror map made on the spawner is translated to each host's own roots.

use parvm_vm::{Error, Runtime, Spawn, Vm};

use crate::harness::{collect, config};

fn run_on(vm: &Vm, host: &str, spawn: Spawn) -> parvm_vm::Value {
    let ids = vm.spawn(spawn.hosts([host])).unwrap();
    assert_eq!(ids.len(), 1, "a free slot on {host}");
    let (outcomes, _) = collect(vm, &ids);
    outcomes[&ids[0]].ok_value().clone()
}

#[test]
fn a_simulated_host_uses_its_own_roots() {
    let local = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let beta_local = tempfile::tempdir().unwrap();
    let beta_shared = tempfile::tempdir().unwrap();
    // The same relative path on both hosts' root 0, with different contents, so the copy
    // tells which root a host mirrored from.
    for (root, text) in [(&shared, "alpha view"), (&beta_shared, "beta view")] {
        std::fs::create_dir_all(root.path().join("project")).unwrap();
        std::fs::write(root.path().join("project/in.txt"), text).unwrap();
    }
    // Without shipping: each host reads its own root (with it, see `ship.rs`).
    let spawner = parvm_vm::Config::builder()
        .local_root(local.path())
        .mirrored_roots([shared.path()])
        .hostname("spawner")
        .ship(parvm_vm::ShipMode::Never)
        .build()
        .unwrap();
    let runtime = Runtime::builder(crate::tasks::tasks())
        .config(spawner)
        .simulated_hosts([("alpha", 1), ("beta", 1)])
        .simulated_host_config(
            "beta",
            config(beta_local.path(), beta_shared.path(), "ignored"),
        )
        .program(env!("CARGO_BIN_EXE_parvm-vm-testprog"), Vec::new())
        .start()
        .expect("local runtime starts");
    let vm = runtime
        .vm()
        .mirror(
            shared.path().join("project/in.txt").display().to_string(),
            ".",
        )
        .build()
        .unwrap();
    let read = Spawn::task("read_then", &("in.txt".to_string(), "keep".to_string()));
    assert_eq!(
        run_on(&vm, "alpha", read.clone())
            .decode::<String>()
            .unwrap(),
        "alpha view"
    );
    assert_eq!(
        run_on(&vm, "beta", read).decode::<String>().unwrap(),
        "beta view"
    );
    let dir = |host: &str| -> String {
        run_on(&vm, host, Spawn::task("dir", &()))
            .decode::<Option<String>>()
            .unwrap()
            .expect("a task folder")
    };
    let canonical = |p: &std::path::Path| p.canonicalize().unwrap();
    assert!(
        std::path::Path::new(&dir("beta")).starts_with(canonical(beta_local.path())),
        "beta's task folder is in beta's local storage"
    );
    assert!(std::path::Path::new(&dir("alpha")).starts_with(canonical(local.path())));
    drop(vm);
    runtime.finalize().unwrap();
}

#[test]
fn a_config_for_an_unknown_host_is_refused() {
    let local = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let error = Runtime::builder(crate::tasks::tasks())
        .config(config(local.path(), shared.path(), "spawner"))
        .simulated_hosts([("alpha", 1)])
        .simulated_host_config("gamma", config(local.path(), shared.path(), "x"))
        .program(env!("CARGO_BIN_EXE_parvm-vm-testprog"), Vec::new())
        .start()
        .err()
        .expect("refused");
    assert!(
        matches!(&error, Error::Setting { reason, .. } if reason.contains("`gamma`") && reason.contains("alpha")),
        "{error:?}"
    );
}
