//! Integration tests of the `parvm` command-line tool: the real binary on real temp trees.

mod help;
mod run;
mod run_flags;
mod run_limits;
mod run_line_buffer;
mod storage;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A shared folder holding a project, and a local storage root, in one temp folder.
struct Site {
    _dir: tempfile::TempDir,
    shared: PathBuf,
    project: PathBuf,
    local: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let shared = base.join("shared");
        let project = shared.join("proj");
        let local = base.join("local");
        std::fs::create_dir_all(project.join("models/deep")).unwrap();
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(project.join("amp.cir"), "R1 a b 1k\n").unwrap();
        std::fs::write(project.join("bias.cir"), "V1 a 0 1\n").unwrap();
        std::fs::write(project.join("models/deep/cmos.lib"), "x").unwrap();
        Site {
            _dir: dir,
            shared,
            project,
            local,
        }
    }

    fn parvm(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_parvm"))
            .args(args)
            .current_dir(&self.project)
            .env("PARALLEL_MIRRORED_STORAGE", &self.shared)
            .env("PARALLEL_LOCAL_STORAGE", &self.local)
            .env_remove("PARVM_HOSTNAME")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.parvm(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.parvm(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    fn task(&self) -> PathBuf {
        self.local.join("task")
    }
}

fn task_arg(site: &Site) -> String {
    site.task().display().to_string()
}

#[test]
fn config_shows_roots_with_indices_and_the_user_folder() {
    let site = Site::new();
    let shown = site.json(&["config"]);
    assert_eq!(shown["local_root"], site.local.display().to_string());
    assert_eq!(shown["mirrored_roots"][0]["index"], 0);
    assert_eq!(
        shown["mirrored_roots"][0]["path"],
        site.shared.display().to_string()
    );
    assert!(shown["user_folder"].as_str().unwrap().contains("parvm-"));
    assert!(site.ok(&["config"]).contains("[0] "));
}

#[test]
fn config_shows_shipping_and_the_host_cache() {
    let site = Site::new();
    let shown = site.json(&["config"]);
    assert_eq!(shown["ship"], "auto");
    let user_folder = shown["user_folder"].as_str().unwrap();
    assert_eq!(shown["cache_folder"], format!("{user_folder}/cache"));
    assert!(shown["cache_max_bytes"].is_null());
    let out = Command::new(env!("CARGO_BIN_EXE_parvm"))
        .args(["--json", "config"])
        .env("PARALLEL_LOCAL_STORAGE", &site.local)
        .env("PARALLEL_MIRRORED_STORAGE", &site.shared)
        .env("PARVM_SHIP", "never")
        .env("PARVM_CACHE_MAX", "2M,300")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["ship"], "never");
    assert_eq!(shown["cache_max_bytes"], 2 << 20);
    assert_eq!(shown["cache_max_files"], 300);
    let text = site.ok(&["config"]);
    assert!(
        text.contains("shipping        auto") && text.contains("10% of the free space"),
        "{text}"
    );
}

#[test]
fn config_refuses_a_trailing_colon() {
    let site = Site::new();
    let out = Command::new(env!("CARGO_BIN_EXE_parvm"))
        .arg("config")
        .env(
            "PARALLEL_MIRRORED_STORAGE",
            format!("{}:", site.shared.display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty entry"));
}

#[test]
fn mirror_copies_then_refresh_copies_only_changes() {
    let site = Site::new();
    let task = task_arg(&site);
    let report = site.json(&[
        "mirror",
        "--map",
        "*.cir=.",
        "--map",
        "models=lib",
        "--into",
        &task,
    ]);
    assert_eq!(report["report"]["files"], 3);
    assert_eq!(report["entries"][0]["root"], 0);
    assert_eq!(report["entries"][0]["suffix"], "proj/*.cir");
    assert!(site.task().join("amp.cir").is_file());
    assert!(site.task().join("lib/models/deep/cmos.lib").is_file());

    std::fs::write(site.project.join("amp.cir"), "R1 a b 2k, changed\n").unwrap();
    std::fs::write(site.task().join("written-by-task.raw"), "result").unwrap();
    let args = [
        "mirror",
        "--map",
        "*.cir=.",
        "--map",
        "models=lib",
        "--into",
        &task,
        "--refresh",
    ];
    let report = site.json(&args);
    assert_eq!(report["report"]["files"], 1);
    assert_eq!(report["report"]["skipped"], 2);
    assert_eq!(
        std::fs::read_to_string(site.task().join("amp.cir")).unwrap(),
        "R1 a b 2k, changed\n"
    );
    assert!(site.task().join("written-by-task.raw").is_file());
}

#[test]
fn bad_maps_are_refused_before_anything_is_copied() {
    let site = Site::new();
    let task = task_arg(&site);
    let cases: [(&str, &str); 6] = [
        ("*.cir=../x", "leaves the task folder"),
        ("*.cir=a/../../x", "leaves the task folder"),
        ("*.cir=/abs", "absolute"),
        ("/etc/hostname=.", "not inside any mirrored storage root"),
        ("missing.cir=.", "does not exist"),
        ("no-equals-sign", "SOURCE=TARGET"),
    ];
    for (map, expected) in cases {
        let message = site.fails(&[
            "mirror",
            "--map",
            "amp.cir=.",
            "--map",
            map,
            "--into",
            &task,
        ]);
        assert!(message.contains(expected), "{map}: {message}");
        assert!(
            !site.task().join("amp.cir").exists(),
            "{map}: something was copied"
        );
    }
}

#[test]
fn unmatched_glob_is_reported_not_fatal() {
    let site = Site::new();
    let out = site.ok(&["mirror", "--map", "*.nothing=.", "--into", &task_arg(&site)]);
    assert!(out.contains("matched nothing"), "{out}");
}

#[test]
fn storage_list_and_sweep_on_an_empty_root() {
    let site = Site::new();
    assert_eq!(site.json(&["storage", "list"]), serde_json::json!([]));
    let report = site.json(&["storage", "sweep"]);
    assert_eq!(report["removed"], serde_json::json!([]));
    assert!(site.ok(&["storage", "clear"]).contains("0 removed"));
}

#[test]
fn storage_sweeps_a_folder_whose_owner_is_dead() {
    let site = Site::new();
    let user_folder = PathBuf::from(site.json(&["config"])["user_folder"].as_str().unwrap());
    // `storage list` creates nothing: make the per-user folder as a worker would.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&user_folder)
        .unwrap();
    let stale = user_folder.join("7ffffffe_vm0");
    std::fs::create_dir(&stale).unwrap();
    let marker = r#"{"pid":2147483646,"boot_id":"00000000-0000-0000-0000-000000000000","start_time":1,"host":"HOST"}"#;
    let host = site.json(&["config"])["hostname"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(stale.join(".parvm-owner"), marker.replace("HOST", &host)).unwrap();
    std::fs::write(stale.join("data"), vec![0u8; 2048]).unwrap();
    let listed = site.json(&["storage", "list"]);
    assert_eq!(listed[0]["state"], "stale", "{listed}");
    let report = site.json(&["storage", "sweep"]);
    assert_eq!(report["removed"][0]["name"], "7ffffffe_vm0");
    assert!(!Path::new(&stale).exists());
}

#[test]
fn a_failed_mirror_removes_the_folders_it_made_and_nothing_else() {
    let site = Site::new();
    let keep = site.local.join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("result.txt"), "earlier").unwrap();
    for into in [site.local.join("x/deep/er"), keep.join("new/deeper")] {
        let into = into.display().to_string();
        let err = site.fails(&[
            "mirror",
            "--map",
            "amp.cir=.",
            "--map",
            "missing.cir=models",
            "--into",
            &into,
        ]);
        assert!(err.contains("missing.cir"), "{err}");
    }
    assert!(
        !site.local.join("x").exists(),
        "`x/deep/er` was left behind"
    );
    assert!(!keep.join("new").exists(), "`keep/new` was left behind");
    assert_eq!(
        std::fs::read_to_string(keep.join("result.txt")).unwrap(),
        "earlier"
    );
}

#[test]
fn refresh_sees_a_source_replaced_with_the_same_size_and_time() {
    let site = Site::new();
    let task = task_arg(&site);
    site.ok(&["mirror", "--map", "*.cir=.", "--into", &task]);
    let source = site.project.join("amp.cir");
    let before = std::fs::metadata(&source).unwrap().modified().unwrap();
    // What `cp -p other.cir amp.cir` does: new content, same length, old time put back.
    std::fs::write(&source, "R1 a b 2k\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&source)
        .unwrap()
        .set_modified(before)
        .unwrap();
    let shown = site.json(&["mirror", "--refresh", "--map", "*.cir=.", "--into", &task]);
    assert_eq!(shown["report"]["files"], 1, "{shown}");
    assert_eq!(
        std::fs::read_to_string(site.task().join("amp.cir")).unwrap(),
        "R1 a b 2k\n"
    );
    // Nothing changed since: nothing is copied, and a copy a task scribbled on comes back.
    std::fs::write(site.task().join("bias.cir"), "scribbled").unwrap();
    let shown = site.json(&["mirror", "--refresh", "--map", "*.cir=.", "--into", &task]);
    assert_eq!(shown["report"]["files"], 1, "{shown}");
    assert_eq!(
        std::fs::read_to_string(site.task().join("bias.cir")).unwrap(),
        "V1 a 0 1\n"
    );
}

#[test]
fn refresh_without_a_record_copies_everything_and_says_so() {
    let site = Site::new();
    let task = task_arg(&site);
    std::fs::create_dir_all(site.task()).unwrap();
    let out = site.ok(&["mirror", "--refresh", "--map", "*.cir=.", "--into", &task]);
    assert!(out.contains("no record of an earlier mirror"), "{out}");
    assert!(site.task().join("amp.cir").exists());
}

#[test]
fn planted_symlinks_and_special_files_are_refused_with_clear_messages() {
    let site = Site::new();
    let elsewhere = site.local.parent().unwrap().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("b")).unwrap();
    std::fs::write(elsewhere.join("key"), "secret").unwrap();
    std::fs::create_dir_all(site.task()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, site.task().join("a")).unwrap();
    let task = task_arg(&site);

    let err = site.fails(&["mirror", "--map", "amp.cir=a/b", "--into", &task]);
    assert!(
        err.contains(&site.task().join("a").display().to_string()),
        "{err}"
    );
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(std::fs::read_dir(elsewhere.join("b")).unwrap().count(), 0);
    std::fs::remove_file(site.task().join("a")).unwrap();

    std::os::unix::fs::symlink(elsewhere.join("key"), site.project.join("leak.cir")).unwrap();
    let err = site.fails(&["mirror", "--map", "*.cir=.", "--into", &task]);
    assert!(err.contains("leak.cir"), "{err}");
    assert!(err.contains("PARALLEL_MIRRORED_STORAGE"), "{err}");
    assert!(!site.task().join("leak.cir").exists());
    std::fs::remove_file(site.project.join("leak.cir")).unwrap();

    let made = Command::new("mkfifo")
        .arg(site.project.join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let err = site.fails(&["mirror", "--map", "pipe=.", "--into", &task]);
    assert!(err.contains("is a fifo"), "{err}");
}
