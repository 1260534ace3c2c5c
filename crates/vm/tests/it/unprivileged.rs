//! The VM end to end as a user who is not root, with read-only inputs: copies of read-only
//! source folders are read-only, and root ignores that. As root (as in CI) the test runs
//! again as `nobody` (see `parvm_test_support::as_unprivileged`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use parvm_test_support::as_unprivileged;
use parvm_vm::Spawn;

use crate::harness::{Backend, Harness, collect, wait_until};

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `models/m.lib` in the read-only source folder `models`.
fn write_model(models: &Path, text: &str) {
    set_mode(models, 0o755);
    fs::write(models.join("m.lib"), text).unwrap();
    set_mode(models, 0o555);
}

/// A one-worker memory cluster whose shared folder holds the read-only source folder
/// `project/models` with `m.lib` at "version 1"; with that folder's path.
fn with_models() -> (Harness, PathBuf) {
    let h = Harness::start(Backend::Memory, 1);
    let models = h.shared.path().join("project/models");
    fs::create_dir_all(&models).unwrap();
    write_model(&models, "version 1");
    (h, models)
}

#[test]
fn read_only_inputs_are_mirrored_refreshed_and_removed() {
    as_unprivileged(
        "unprivileged::read_only_inputs_are_mirrored_refreshed_and_removed",
        || {
            let (h, models) = with_models();
            for persistent in [false, true] {
                let vm = h
                    .runtime()
                    .vm()
                    .mirror(models.display().to_string(), ".")
                    .persistent(persistent)
                    .build()
                    .unwrap();
                let read = || -> String {
                    let ids = vm
                        .spawn(Spawn::task(
                            "read_then",
                            &("models/m.lib".to_string(), "keep".to_string()),
                        ))
                        .unwrap();
                    let (outcomes, _) = collect(&vm, &ids);
                    outcomes[&ids[0]].value()
                };
                assert_eq!(read(), "version 1", "persistent: {persistent}");
                write_model(&models, "version 2, longer");
                assert_eq!(read(), "version 2, longer", "persistent: {persistent}");
                write_model(&models, "version 1");
                drop(vm);
                wait_until("every task folder is removed", || {
                    h.task_folders().is_empty()
                });
            }
            set_mode(&models, 0o755);
        },
    );
}

/// A folder handed on to the next job is renewed, or, where a job took rights away that
/// a renewal cannot mend as a user who is not root, emptied and mirrored afresh: every job
/// finds exactly its inputs.
#[test]
fn a_folder_handed_on_is_clean_whatever_rights_a_job_took_away() {
    as_unprivileged(
        "unprivileged::a_folder_handed_on_is_clean_whatever_rights_a_job_took_away",
        || {
            let (h, models) = with_models();
            let vm = h
                .runtime()
                .vm()
                .mirror(models.display().to_string(), ".")
                .build()
                .unwrap();
            // $1: what the job takes away after checking its folder.
            let script = r#"
                left=$(ls -A | grep -v '^[.]parvm-' | tr '\n' ' ')
                [ "$left" = "models " ] || { echo "left by an earlier job: $left" >&2; exit 7; }
                [ "$(cat models/m.lib)" = "version 1" ] || { echo "m.lib changed" >&2; exit 8; }
                mkdir -p out/deep && touch out/deep/f
                case "$1" in
                    outputs) chmod 000 out/deep && chmod 500 out ;;
                    inputs) chmod 000 models ;;
                    file) chmod 200 models/m.lib ;;
                esac"#;
            let takes = ["outputs", "inputs", "file", "nothing"];
            let jobs = (0..12).map(|i| {
                parvm_vm::Job::command("sh").args(["-c", script, "sh", takes[i % takes.len()]])
            });
            for result in vm.dispatch(jobs) {
                let result = result.unwrap();
                assert!(result.outcome.is_success(), "{result}");
            }
            drop(vm);
            wait_until("every task folder is removed", || {
                h.task_folders().is_empty()
            });
            set_mode(&models, 0o755);
        },
    );
}
