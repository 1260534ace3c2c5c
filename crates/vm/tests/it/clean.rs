//! `VmBuilder::persistent_clean`: a reused persistent folder keeps the mirrored inputs and
//! loses what earlier tasks wrote, without following a symlink out of it.

use parvm_vm::{CommandStatus, Spawn, Vm};

use crate::harness::{Backend, Harness, collect};

/// What an earlier task leaves: a result, a file inside a mirrored folder, a folder of
/// its own, and symlinks to a folder outside.
const SCRIBBLE: &str = "echo old > result.txt && echo x > models/extra.lib \
    && mkdir -p run/out && echo raw > run/out/data \
    && ln -s \"$OUTSIDE\" escape && ln -s \"$OUTSIDE\" run/escape";

/// A folder of outputs the task made read-only, which a renewal cannot remove in place.
const READ_ONLY: &str = "mkdir -p ro/deep && touch ro/deep/f && chmod 500 ro/deep ro";

fn tree(vm: &Vm) -> Vec<String> {
    let ids = vm.spawn(Spawn::task("tree", &())).unwrap();
    let (outcomes, _) = collect(vm, &ids);
    outcomes[&ids[0]].value()
}

fn scribble(vm: &Vm, outside: &std::path::Path) {
    let ids = vm
        .spawn(
            Spawn::command("sh")
                .args(["-c", SCRIBBLE])
                .env("OUTSIDE", outside.display().to_string()),
        )
        .unwrap();
    let (outcomes, _) = collect(vm, &ids);
    assert_eq!(
        outcomes[&ids[0]].value::<CommandStatus>().code,
        Some(0),
        "the command ran"
    );
}

#[test]
fn clean_persistent_folders_keep_inputs_and_drop_outputs() {
    let h = Harness::start(Backend::Local, 1);
    let shared = h.shared.path();
    std::fs::write(shared.join("amp.cir"), "netlist").unwrap();
    std::fs::create_dir_all(shared.join("models")).unwrap();
    std::fs::write(shared.join("models/a.lib"), "library").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep").unwrap();
    let inputs = ["amp.cir", "models", "models/a.lib"];

    let build = |clean: bool| {
        let vm = h
            .runtime()
            .vm()
            .mirror(shared.join("amp.cir").display().to_string(), ".")
            .mirror(shared.join("models").display().to_string(), ".");
        if clean {
            vm.persistent_clean(true).build().unwrap()
        } else {
            vm.persistent(true).build().unwrap()
        }
    };

    // Plain persistent folders keep what tasks wrote (the behaviour clean mode fixes).
    let kept = build(false);
    assert_eq!(tree(&kept), inputs);
    scribble(&kept, outside.path());
    assert!(tree(&kept).contains(&"result.txt".to_owned()));
    drop(kept);

    let vm = build(true);
    assert_eq!(tree(&vm), inputs);
    scribble(&vm, outside.path());
    assert_eq!(tree(&vm), inputs, "what the earlier task wrote is gone");
    // A mirrored input a task deleted comes back, and the cleaning goes on.
    let ids = vm
        .spawn(Spawn::command("sh").args(["-c", "rm -r models && echo new > result.txt"]))
        .unwrap();
    collect(&vm, &ids);
    assert_eq!(tree(&vm), inputs);
    let ids = vm
        .spawn(Spawn::command("sh").args(["-c", READ_ONLY]))
        .unwrap();
    collect(&vm, &ids);
    assert_eq!(
        tree(&vm),
        inputs,
        "a read-only folder of outputs is gone too"
    );
    // A source removed since: its copy goes, as a fresh mirror would not have it.
    std::fs::remove_file(shared.join("models/a.lib")).unwrap();
    assert_eq!(tree(&vm), ["amp.cir", "models"]);
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing outside the folder was touched"
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious")).unwrap(),
        "keep"
    );
}
