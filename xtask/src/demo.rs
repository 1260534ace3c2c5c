//! `cargo xtask demo`: examples 01–08 in a temporary storage that is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, exec, mpirun_root_env, root, target_dir, transport_arg};

/// A scratch setup: shared (mirrored) storage holding a project folder and a folder of
/// libraries (`pdk`), and local storage.
pub(crate) struct Scratch {
    _dir: tempfile::TempDir,
    shared: PathBuf,
    /// The project folder, where the examples run.
    pub(crate) project: PathBuf,
    local: PathBuf,
}

impl Scratch {
    pub(crate) fn new() -> Result<Scratch> {
        let dir = tempfile::Builder::new().prefix("parvm-demo-").tempdir()?;
        let shared = dir.path().canonicalize()?.join("shared");
        let project = shared.join("project");
        let local = dir.path().canonicalize()?.join("local");
        std::fs::create_dir_all(project.join("models"))?;
        std::fs::create_dir_all(&local)?;
        std::fs::write(
            project.join("amp.cir"),
            "* a two-stage amplifier\nR1 in out 1k\n",
        )?;
        std::fs::write(
            project.join("opamp.inc"),
            ".subckt opamp inp inn out\n.ends\n",
        )?;
        std::fs::write(
            project.join("models/cmos.lib"),
            ".model nmos nmos level=1\n",
        )?;
        std::fs::create_dir_all(shared.join("pdk"))?;
        std::fs::write(shared.join("pdk/typical.lib"), ".lib typical\n.endl\n")?;
        Ok(Scratch {
            _dir: dir,
            shared,
            project,
            local,
        })
    }

    fn apply(&self, command: &mut Command) {
        self.apply_env(command);
        command.current_dir(&self.project);
    }

    /// Sets the storage variables (mirrored: the shared folder; local: its own folder).
    pub(crate) fn apply_env(&self, command: &mut Command) {
        command
            .env("PARALLEL_MIRRORED_STORAGE", &self.shared)
            .env("PARALLEL_LOCAL_STORAGE", &self.local);
    }

    /// Fails when a task folder was left behind in local storage.
    pub(crate) fn check_clean(&self) -> Result<()> {
        let leftovers = leftover_task_folders(&self.local)?;
        if !leftovers.is_empty() {
            bail!("the demo left task folders behind: {leftovers:?}");
        }
        Ok(())
    }
}

fn leftover_task_folders(local: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for user_dir in std::fs::read_dir(local)? {
        let user_dir = user_dir?.path();
        if user_dir.is_dir() {
            for entry in std::fs::read_dir(&user_dir)? {
                found.push(entry?.path());
            }
        }
    }
    Ok(found)
}

/// Examples that only the local transport can run: 07 kills a worker, which ends a whole
/// MPI job (see docs/cluster.md).
const LOCAL_ONLY: &[&str] = &["08-failures"];

/// The example names (`01-config` …), in order.
fn examples() -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples"))
        .context("cannot read the examples folder")?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("main.rs").is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Entry point of `cargo xtask demo`.
pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|arg| arg == "--data") {
        return data_layer();
    }
    let transport = transport_arg(args)?;
    let names = examples()?;
    if names.is_empty() {
        bail!("no examples found under examples/");
    }
    let features: &[&str] = if transport == "mpi" {
        &["--features", "mpi"]
    } else {
        &[]
    };
    println!("Building the examples (release)...");
    exec(
        cargo()
            .args(["build", "--quiet", "--release", "--examples"])
            .args(features),
    )?;
    let scratch = Scratch::new()?;
    let mut ran = 0;
    for name in &names {
        if transport != "local" && LOCAL_ONLY.contains(&name.as_str()) {
            println!(
                "\n(example {name} skipped: under {transport} a worker that dies ends the whole job)"
            );
            continue;
        }
        ran += 1;
        println!("\n━━━━━━━━━━ example {name} ({transport} transport) ━━━━━━━━━━");
        let program = target_dir().join("release/examples").join(name);
        let mut command = if transport == "mpi" {
            // mpirun hands its own environment only to ranks on this host; `-x` exports a
            // variable to every rank, as a real cluster needs.
            let mut command = Command::new("mpirun");
            mpirun_root_env(&mut command);
            command.args(["--oversubscribe", "-n", "3"]);
            for var in [
                "PARALLEL_MIRRORED_STORAGE",
                "PARALLEL_LOCAL_STORAGE",
                "PARVM_TRANSPORT",
            ] {
                command.args(["-x", var]);
            }
            command.arg(&program);
            command
        } else {
            Command::new(&program)
        };
        scratch.apply(&mut command);
        command.env("PARVM_TRANSPORT", &transport);
        exec(&mut command).with_context(|| format!("example {name} failed"))?;
        scratch.check_clean()?;
    }
    println!("\nAll {ran} examples ran; local storage is clean.");
    Ok(())
}

/// The data layer on a generated tree: configuration, one task's mirroring, storage.
fn data_layer() -> Result<()> {
    exec(cargo().args(["build", "--quiet", "--release", "-p", "parvm-cli"]))?;
    let parvm = target_dir().join("release/parvm");
    let scratch = Scratch::new()?;
    let task = scratch.local.join("task-folder");
    let steps: Vec<Vec<String>> = vec![
        vec!["config".into()],
        vec![
            "mirror".into(),
            "--map".into(),
            "*.cir=.".into(),
            "--map".into(),
            "models=lib".into(),
            "--into".into(),
            task.display().to_string(),
        ],
        vec!["storage".into(), "list".into()],
        vec!["plant".into()],
        vec!["storage".into(), "list".into()],
        vec!["storage".into(), "sweep".into()],
        vec!["storage".into(), "list".into()],
    ];
    for step in steps {
        if step[0] == "plant" {
            let left = plant_crashed_worker_folder(&scratch.local)?;
            println!(
                "\n(a worker killed before the last reboot left {} behind)",
                left.display()
            );
            continue;
        }
        println!("\n$ parvm {}", step.join(" "));
        let mut command = Command::new(&parvm);
        command.args(&step);
        scratch.apply(&mut command);
        exec(&mut command)?;
        if step[0] == "mirror" {
            println!("\n$ find {}", task.display());
            for entry in walk(&task)? {
                println!("{}", entry.display());
            }
        }
    }
    Ok(())
}

/// Makes a task folder whose owner marker names a dead process of an earlier boot, as a
/// worker killed before a reboot leaves behind.
fn plant_crashed_worker_folder(local: &Path) -> Result<PathBuf> {
    let user_folder = std::fs::read_dir(local)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("parvm-"))
        })
        .context("the per-user folder was not made")?;
    let folder = user_folder.join("7a3f_vm0");
    std::fs::create_dir_all(folder.join("lib"))?;
    std::fs::write(
        folder.join("amp.cir"),
        "* a netlist copied for a task that never finished\n",
    )?;
    std::fs::write(folder.join("lib/cmos.lib"), vec![b'x'; 40_000])?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let marker = format!(
        r#"{{"pid":31295,"boot_id":"00000000-0000-0000-0000-000000000000","start_time":4242,"host":"{}"}}"#,
        host.trim()
    );
    std::fs::write(folder.join(".parvm-owner"), marker)?;
    Ok(folder)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        out.push(next.clone());
        if next.is_dir() && !next.is_symlink() {
            for entry in std::fs::read_dir(&next)? {
                stack.push(entry?.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
