//! `VmBuilder::build` refuses a literal mirror source that does not exist, before anything is
//! spawned; a glob that matches nothing is not an error.

use parvm_vm::{Error, Spawn};

use crate::harness::{Backend, Harness, collect};

#[test]
fn missing_literal_source_is_refused_by_build() {
    let h = Harness::start(Backend::Local, 1);
    let shared = h.shared.path().to_owned();
    std::fs::write(shared.join("amp.cir"), "netlist").unwrap();
    std::os::unix::fs::symlink(shared.join("nowhere.lib"), shared.join("dangling.lib")).unwrap();

    let missing = shared.join("missing.cir");
    let error = h
        .runtime()
        .vm()
        .mirror(shared.join("amp.cir").to_str().unwrap(), ".")
        .mirror(missing.to_str().unwrap(), "in")
        .build()
        .err()
        .expect("a missing literal source is refused");
    assert!(
        matches!(&error, Error::MirrorSourceMissing { path, .. } if path.ends_with("missing.cir")),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("missing.cir") && text.contains("does not exist"),
        "{text}"
    );
    assert!(
        text.contains("VmBuilder::mirror"),
        "says what to do: {text}"
    );

    let error = h
        .runtime()
        .vm()
        .mirror(shared.join("dangling.lib").to_str().unwrap(), ".")
        .build()
        .err()
        .expect("a symlink to nothing is refused");
    assert!(
        error.to_string().contains("nowhere.lib"),
        "names the link's target: {error}"
    );
    assert!(h.task_folders().is_empty(), "{:?}", h.task_folders());

    // A glob that matches nothing is fine, and so is an existing literal.
    let vm = h
        .runtime()
        .vm()
        .mirror(shared.join("*.none").to_str().unwrap(), ".")
        .mirror(shared.join("amp.cir").to_str().unwrap(), ".")
        .build()
        .expect("an unmatched glob is not an error");
    let ids = vm.spawn(Spawn::task("list", &())).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].value::<Vec<String>>(), vec!["amp.cir"]);
}
