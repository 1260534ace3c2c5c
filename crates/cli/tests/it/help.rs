//! `parvm completions` and `parvm man`: made from the same definitions as `--help`.

use std::process::Command;

fn parvm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_parvm"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn completions_cover_every_subcommand_and_run_s_options() {
    for shell in ["bash", "zsh", "fish"] {
        let out = parvm(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in [
            "run",
            "worker",
            "storage",
            "joblog",
            "resume-failed",
            "line-buffer",
        ] {
            assert!(script.contains(word), "{shell} completion lacks `{word}`");
        }
    }
}

#[test]
fn man_pages_of_parvm_and_of_run() {
    let out = parvm(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH parvm 1"), "{page}");
    let out = parvm(&["man", "run"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH parvm-run 1"), "{page}");
    assert!(
        page.contains("joblog") && page.contains("parvm run"),
        "{page}"
    );
    let out = parvm(&["man", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`nope` is not a parvm subcommand"),
        "{stderr}"
    );
}
