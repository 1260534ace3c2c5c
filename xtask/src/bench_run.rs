//! `cargo xtask bench run`: the `parvm` binary's sweeps against what users run by hand, in
//! the same run on the same machine: 2 000 cases of `true` against `xargs -P` and GNU
//! parallel, and 200 cases over a mirrored 2 000-file input folder against `cp -a` per case
//! under `xargs -P`.
//!
//! It drives the release binary from the outside, like a user, so it must not know the
//! CLI's internals: only its command line and the storage variables.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, exec, target_dir};

/// The shell script of the baseline that runs each case as `parvm run` does, `/bin/sh -c
/// LINE`, under `xargs -P` (`true` with the case's value, as `true VALUE`).
const SHELL_CASE: &str = "true \"$1\"";

/// Worker slots (`-j`, `-P`) of every contender: the reference machine has 2 cores.
const JOBS: usize = 2;
/// Cases of `true` in part (a).
const TRUE_CASES: usize = 2000;
/// Cases over the mirrored input folder in part (b).
const MIRROR_CASES: usize = 200;
/// Files in the mirrored input folder, and the size of each.
const INPUT_FILES: usize = 2000;
const INPUT_FILE_BYTES: usize = 4096;
/// Each measurement is repeated this many times; the median is reported.
const REPEATS: usize = 3;

/// Which parts of the bench to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `cargo xtask bench run`: both.
    All,
    /// `cargo xtask bench run true`: (a) only, the per-case overhead.
    True,
    /// `cargo xtask bench run mirrored`: (b) only.
    Mirrored,
}

/// Entry point of `cargo xtask bench run`.
pub fn run(part: Part) -> Result<()> {
    exec(cargo().args(["build", "--release", "-p", "parvm-cli"]))?;
    let parvm = target_dir().join("release").join("parvm");
    if !parvm.is_file() {
        bail!(
            "the release build left no binary at {}; run `cargo build --release -p parvm-cli` and look at its output",
            parvm.display()
        );
    }
    let parallel = if part == Part::Mirrored {
        None
    } else {
        gnu_parallel()
    };

    // The scratch folder holds the mirrored storage, the local storage and the baseline's
    // case folders, all on the same file system so parvm and `cp -a` copy alike.
    let base = std::env::var_os("PARVM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("parvm-bench-run-")
        .tempdir_in(&base)
        .with_context(|| {
            format!(
                "cannot make a scratch folder in {}; set PARVM_BENCH_DIR to a writable folder",
                base.display()
            )
        })?;
    let bench = Bench::new(parvm, scratch.path())?;
    println!(
        "bench run: {} on {} ({JOBS} jobs, median of {REPEATS})",
        bench.parvm.display(),
        scratch.path().display()
    );

    if part != Part::Mirrored {
        bench.true_cases(parallel.as_deref())?;
    }
    if part != Part::True {
        bench.mirrored_cases()?;
    }
    bench.check_local_storage_empty()?;

    let path = scratch.path().to_path_buf();
    scratch
        .close()
        .with_context(|| format!("cannot remove the scratch folder {}", path.display()))?;
    Ok(())
}

/// The binary and the folders of one bench run.
struct Bench {
    parvm: PathBuf,
    mirrored: PathBuf,
    local: PathBuf,
    baseline: PathBuf,
}

impl Bench {
    fn new(parvm: PathBuf, scratch: &Path) -> Result<Self> {
        let bench = Self {
            parvm,
            mirrored: scratch.join("mirrored"),
            local: scratch.join("local"),
            baseline: scratch.join("baseline"),
        };
        for dir in [&bench.mirrored, &bench.local, &bench.baseline] {
            fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(bench)
    }

    /// `parvm run` with the scratch storage, started in the mirrored storage (where `--map`
    /// sources are found), on the local transport whatever the environment says.
    fn parvm_run(&self) -> Command {
        let mut command = Command::new(&self.parvm);
        command
            .current_dir(&self.mirrored)
            .env("PARALLEL_MIRRORED_STORAGE", &self.mirrored)
            .env("PARALLEL_LOCAL_STORAGE", &self.local)
            .args(["run", "--transport", "local", "-j"])
            .arg(JOBS.to_string());
        command
    }

    /// (a) 2 000 cases of `true`: the per-case cost of each tool itself.
    fn true_cases(&self, parallel: Option<&Path>) -> Result<()> {
        let values = numbers(TRUE_CASES);
        let stdin = lines(&values);
        println!("\n(a) {TRUE_CASES} cases of `true`, -j {JOBS}");

        // Each round runs every contender once, so that a change in the machine's load
        // falls on all of them alike.
        let jobs = JOBS.to_string();
        let mut parvm = || {
            let mut command = self.parvm_run();
            command.arg("true").arg(":::").args(&values);
            timed(&mut command, None)
        };
        let mut xargs = || {
            let mut command = Command::new("xargs");
            command.args(["-P", &jobs, "-n", "1", "true"]);
            timed(&mut command, Some(&stdin))
        };
        // What parvm runs per case, `/bin/sh -c LINE`, with nothing around it: the cost
        // of the case itself, so that each tool's own share can be told apart from it.
        let mut shell = || {
            let mut command = Command::new("xargs");
            command
                .args(["-P", &jobs, "-n", "1", "/bin/sh", "-c"])
                .args([SHELL_CASE, "sh"]);
            timed(&mut command, Some(&stdin))
        };
        let (jobs_ref, values_ref) = (&jobs, &values);
        let mut gnu = parallel.map(|parallel| {
            move || {
                let mut command = Command::new(parallel);
                command
                    .args(["--will-cite", "-j", jobs_ref, "true", ":::"])
                    .args(values_ref);
                timed(&mut command, None)
            }
        });
        let mut contenders: Vec<&mut dyn FnMut() -> Result<Measured>> =
            vec![&mut parvm, &mut xargs, &mut shell];
        if let Some(gnu) = &mut gnu {
            contenders.push(gnu);
        }
        let mut measured = medians(&mut contenders)?.into_iter();
        let (Some(parvm), Some(xargs), Some(shell)) =
            (measured.next(), measured.next(), measured.next())
        else {
            bail!("a contender of part (a) was not measured");
        };
        let gnu = measured.next();

        print_header();
        print_row(
            &format!("parvm run -j {JOBS} true ::: 1..{TRUE_CASES}"),
            &parvm,
            TRUE_CASES,
        );
        print_row(&format!("xargs -P {JOBS} -n 1 true"), &xargs, TRUE_CASES);
        print_row(
            &format!("xargs -P {JOBS} -n 1 /bin/sh -c '{SHELL_CASE}' sh"),
            &shell,
            TRUE_CASES,
        );
        if let Some(gnu) = &gnu {
            print_row(
                &format!("parallel -j {JOBS} true ::: 1..{TRUE_CASES}"),
                gnu,
                TRUE_CASES,
            );
        }
        println!(
            "parvm / xargs -P: {:.2}x wall, {:.2}x CPU (target <= 1.5x)",
            ratio(parvm.time, xargs.time),
            ratio(parvm.cpu, xargs.cpu)
        );
        if let Some(gnu) = &gnu {
            println!(
                "GNU parallel / parvm: {:.1}x wall, {:.1}x CPU (target >= 10x)",
                ratio(gnu.time, parvm.time),
                ratio(gnu.cpu, parvm.cpu)
            );
        }
        // Beyond the case's own `sh -c`: what each tool adds to it (negative when the
        // machine's noise is larger than that).
        let beyond = |run: &Measured| {
            (
                (per_case(run.time) - per_case(shell.time)) * JOBS as f64,
                per_case(run.cpu) - per_case(shell.cpu),
            )
        };
        let (parvm_wall, parvm_cpu) = beyond(&parvm);
        println!(
            "beyond starting the case's /bin/sh: parvm {parvm_wall:.3} ms wall, {parvm_cpu:.3} ms CPU per case"
        );
        if let Some(gnu) = &gnu {
            let (gnu_wall, gnu_cpu) = beyond(gnu);
            println!(
                "beyond starting the case's /bin/sh: GNU parallel {gnu_wall:.3} ms wall, {gnu_cpu:.3} ms CPU per case ({} wall, {} CPU parvm's)",
                times(gnu_wall, parvm_wall),
                times(gnu_cpu, parvm_cpu)
            );
        }
        Ok(())
    }

    /// (b) 200 cases each listing a mirrored 2 000-file folder in its own task folder,
    /// against copying the folder per case by hand.
    fn mirrored_cases(&self) -> Result<()> {
        let inputs = self.mirrored.join("inputs");
        fs::create_dir(&inputs).with_context(|| format!("cannot create {}", inputs.display()))?;
        let content = vec![b'x'; INPUT_FILE_BYTES];
        for index in 0..INPUT_FILES {
            let file = inputs.join(format!("in-{index:04}.dat"));
            fs::write(&file, &content)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        let values = numbers(MIRROR_CASES);
        let stdin = lines(&values);
        let expected = format!("{INPUT_FILES}\n").repeat(MIRROR_CASES);
        println!(
            "\n(b) {MIRROR_CASES} cases over a mirrored folder of {INPUT_FILES} files x {} KiB, -j {JOBS}",
            INPUT_FILE_BYTES / 1024
        );

        // DST is the folder SRC is mirrored into, so `inputs=.` gives the task `inputs/`
        // (`inputs=inputs` would give `inputs/inputs/`). `{}` after the comment keeps parvm
        // from appending the value to `wc -l`.
        let parvm = median(|| {
            let mut command = self.parvm_run();
            command
                .args(["--map", "inputs=.", "ls inputs | wc -l # {}", ":::"])
                .args(&values);
            timed(&mut command, None)
        })?;
        check_output("parvm run", &parvm.stdout, &expected)?;

        // What users write by hand: a copy per case, the command in it, the copy removed.
        let script = r#"d="$1/case-$2" && mkdir "$d" && cp -a inputs "$d/inputs" && (cd "$d" && ls inputs | wc -l) && rm -rf "$d""#;
        let baseline = median(|| {
            let mut command = Command::new("xargs");
            command
                .current_dir(&self.mirrored)
                .args(["-P", &JOBS.to_string(), "-n", "1", "sh", "-c", script, "sh"])
                .arg(&self.baseline);
            timed(&mut command, Some(&stdin))
        })?;
        check_output("the cp -a baseline", &baseline.stdout, &expected)?;

        print_header();
        print_row(
            &format!(
                "parvm run -j {JOBS} --map inputs=. 'ls inputs | wc -l # {{}}' ::: 1..{MIRROR_CASES}"
            ),
            &parvm,
            MIRROR_CASES,
        );
        print_row(
            &format!("xargs -P {JOBS}: cp -a inputs, ls | wc -l, rm -rf"),
            &baseline,
            MIRROR_CASES,
        );
        println!(
            "parvm / cp -a baseline: {:.2}x wall, {:.2}x CPU",
            ratio(parvm.time, baseline.time),
            ratio(parvm.cpu, baseline.cpu)
        );
        Ok(())
    }

    /// Every task folder is gone: at most the empty per-user folder `parvm-<user>` is left.
    fn check_local_storage_empty(&self) -> Result<()> {
        let mut left = Vec::new();
        for entry in read_dir(&self.local)? {
            let is_user_folder = entry.file_name().to_string_lossy().starts_with("parvm-")
                && entry.file_type().is_ok_and(|kind| kind.is_dir());
            if !is_user_folder {
                left.push(entry.path());
                continue;
            }
            left.extend(read_dir(&entry.path())?.iter().map(fs::DirEntry::path));
        }
        if !left.is_empty() {
            bail!(
                "parvm left {} entries in local storage {}: {:?}; a task folder leaked, look at `parvm storage` there",
                left.len(),
                self.local.display(),
                left
            );
        }
        println!("\nlocal storage {} is empty", self.local.display());
        Ok(())
    }
}

/// GNU parallel's path, installed with apt-get when missing and possible; `None` (with the
/// reason printed) when it is not there.
fn gnu_parallel() -> Option<PathBuf> {
    if let Err(why) = crate::install::ensure("parallel", "parallel") {
        println!("GNU parallel: skipped, {why}");
        return None;
    }
    // moreutils ships another `parallel`; only GNU parallel is the baseline.
    let version = Command::new("parallel")
        .args(["--will-cite", "--version"])
        .stdin(Stdio::null())
        .output();
    match version {
        Ok(output) if String::from_utf8_lossy(&output.stdout).contains("GNU parallel") => {
            Some(PathBuf::from("parallel"))
        }
        _ => {
            println!("GNU parallel: skipped, the `parallel` on PATH is not GNU parallel");
            None
        }
    }
}

/// One timed run of a command.
struct Measured {
    time: Duration,
    /// CPU time (user and system) of the command and every process it started and
    /// waited for: on a shared machine, steadier than the wall time.
    cpu: Duration,
    stdout: Vec<u8>,
}

/// User and system time of this process's children that ended and were waited for, from
/// `/proc/self/stat` (fields 16 and 17, in clock ticks of 1/100 s on Linux); `None` where
/// it cannot be read.
fn children_cpu() -> Option<Duration> {
    /// `USER_HZ`, the unit of the `/proc` tick counts on every Linux architecture.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from after its `)`.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // Field 3 is the first after `)`: field 16 is 13 further on.
    let user: u64 = fields.nth(13)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user + system) * 1000 / TICKS_PER_SECOND,
    ))
}

/// Runs a command to completion with `stdin` fed in, timing it; fails when it fails.
fn timed(command: &mut Command, stdin: Option<&[u8]>) -> Result<Measured> {
    let description = format!("{command:?}");
    // The 2 000 values would bury the error: the start of the command line is enough.
    let description: String = description.chars().take(200).collect();
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cpu_before = children_cpu();
    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {description}"))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)
            .with_context(|| format!("cannot feed the input of {description}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for {description}"))?;
    let time = start.elapsed();
    let cpu = match (cpu_before, children_cpu()) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => Duration::ZERO,
    };
    if !output.status.success() {
        bail!(
            "{description} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(Measured {
        time,
        cpu,
        stdout: output.stdout,
    })
}

/// The run with the median wall time of [`REPEATS`] runs, carrying the median CPU time
/// of the same runs (the two medians may come from different runs).
fn median(mut measure: impl FnMut() -> Result<Measured>) -> Result<Measured> {
    let runs = (0..REPEATS)
        .map(|_| measure())
        .collect::<Result<Vec<_>>>()?;
    Ok(middle(runs))
}

/// The median of [`REPEATS`] runs of each contender, run in rounds of one run each, in
/// order.
fn medians(contenders: &mut [&mut dyn FnMut() -> Result<Measured>]) -> Result<Vec<Measured>> {
    let mut runs: Vec<Vec<Measured>> = contenders.iter().map(|_| Vec::new()).collect();
    for _ in 0..REPEATS {
        for (measure, runs) in contenders.iter_mut().zip(&mut runs) {
            runs.push(measure()?);
        }
    }
    Ok(runs.into_iter().map(middle).collect())
}

/// The run of median wall time, with the median CPU time of all.
fn middle(mut runs: Vec<Measured>) -> Measured {
    let mut cpus: Vec<Duration> = runs.iter().map(|run| run.cpu).collect();
    cpus.sort();
    runs.sort_by_key(|run| run.time);
    let middle = runs.len() / 2;
    let mut run = runs.swap_remove(middle);
    run.cpu = cpus[middle];
    run
}

/// Fails unless a contender printed what every case should print, so a broken run is not
/// reported as a fast one.
fn check_output(who: &str, stdout: &[u8], expected: &str) -> Result<()> {
    if stdout != expected.as_bytes() {
        let got = String::from_utf8_lossy(stdout);
        bail!(
            "{who} printed {} lines, not {MIRROR_CASES} lines of `{INPUT_FILES}`: {:?}; run its command by hand to see why",
            got.lines().count(),
            got.chars().take(200).collect::<String>()
        );
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("cannot list {}", dir.display()))
}

fn numbers(count: usize) -> Vec<String> {
    (1..=count).map(|n| n.to_string()).collect()
}

fn lines(values: &[String]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| [v.as_bytes(), b"\n"])
        .flatten()
        .copied()
        .collect()
}

/// `total` over part (a)'s cases, in milliseconds.
fn per_case(total: Duration) -> f64 {
    total.as_secs_f64() * 1e3 / TRUE_CASES as f64
}

/// `a / b` as `N.Nx`, or words saying why not when `b` is under 10 µs (within the
/// noise of these measurements).
fn times(a: f64, b: f64) -> String {
    if b < 0.01 {
        "not a ratio: parvm's share is within the noise, of".to_owned()
    } else {
        format!("{:.1}x", a / b)
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn print_header() {
    println!(
        "{:<72} {:>10} {:>14} {:>14}",
        "command", "wall", "per case", "CPU per case"
    );
}

/// A row: wall time, the per-case overhead as time / cases x jobs (the time one slot
/// spends on each case), and the CPU time per case of all its processes.
fn print_row(what: &str, run: &Measured, cases: usize) {
    let per_case = run.time.as_secs_f64() / cases as f64 * JOBS as f64;
    let cpu_per_case = run.cpu.as_secs_f64() / cases as f64;
    println!(
        "{what:<72} {:>8.3} s {:>11.3} ms {:>11.3} ms",
        run.time.as_secs_f64(),
        per_case * 1e3,
        cpu_per_case * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_cpu_counts_a_busy_child_once_waited_for() {
        let before = children_cpu().expect("/proc/self/stat is readable");
        // About 0.1–0.5 s of shell arithmetic, all CPU.
        let status = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let spent = children_cpu().unwrap().saturating_sub(before);
        assert!(spent >= Duration::from_millis(30), "{spent:?}");
        assert!(spent < Duration::from_secs(60), "{spent:?}");
    }
}
