//! `parvm run` at the limits of the machine: a full results disk, a full local storage
//! disk, and a case that prints 1 GB.
//!
//! A full disk is a small tmpfs mounted in a private mount namespace (`unshare -m` as root,
//! `unshare -rm` otherwise), so nothing outside the test sees it; when neither works, the
//! test says why and does nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::run::{Sweep, walk};

/// Runs in the new mount namespace: mounts a tmpfs of size `$1` on `$2`, runs the rest
/// with `PREFILL` bytes already taking room on it, then copies what the tmpfs holds into
/// `$3` (it vanishes with the namespace) and exits with the command's status.
const IN_TMPFS: &str = r#"
size=$1 mount=$2 snapshot=$3
shift 3
mount -t tmpfs -o "size=$size" parvm-test "$mount" || exit 201
if [ -n "$PREFILL" ]; then head -c "$PREFILL" /dev/zero > "$mount/filler" 2>/dev/null; fi
"$@"
status=$?
rm -f "$mount/filler"
cp -a "$mount/." "$snapshot" || exit 202
exit $status
"#;

/// The `unshare` flags that give this process a private mount namespace it can mount a
/// tmpfs in, or `None` (with the reason printed) when there are none.
fn namespace_flags() -> Option<&'static str> {
    let probe = tempfile::tempdir().unwrap();
    for flags in ["-m", "-rm"] {
        let mounted = Command::new("unshare")
            .args([flags, "mount", "-t", "tmpfs", "-o", "size=64k", "probe"])
            .arg(probe.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if mounted.is_ok_and(|status| status.success()) {
            return Some(flags);
        }
    }
    eprintln!(
        "skipped: neither `unshare -m` nor `unshare -rm` can mount a tmpfs here (no util-linux, or user namespaces are disabled), so no full disk can be made without touching the host"
    );
    None
}

/// `command` run with a tmpfs of `size` mounted on `mount` (holding `prefill` bytes of
/// filler at the start); what the tmpfs held at the end is copied into `snapshot`.
fn on_a_small_tmpfs(
    flags: &str,
    command: &Command,
    mount: &Path,
    size: &str,
    prefill: Option<usize>,
    snapshot: &Path,
) -> Output {
    std::fs::create_dir_all(mount).unwrap();
    std::fs::create_dir_all(snapshot).unwrap();
    let mut wrapped = Command::new("unshare");
    wrapped
        .args([flags, "sh", "-c", IN_TMPFS, "sh", size])
        .arg(mount)
        .arg(snapshot)
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    match prefill {
        Some(bytes) => wrapped.env("PREFILL", bytes.to_string()),
        None => wrapped.env_remove("PREFILL"),
    };
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    let out = wrapped.output().unwrap();
    assert!(
        !matches!(out.status.code(), Some(201 | 202)),
        "the tmpfs wrapper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The case numbers named in lines of `stderr` that contain `what`.
fn cases_named(stderr: &str, what: &str) -> BTreeSet<usize> {
    stderr
        .lines()
        .filter(|line| line.contains(what))
        .filter_map(|line| {
            let after = line.split("case ").nth(1)?;
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn a_full_results_disk_fails_the_cases_it_cuts_and_presents_no_partial_folder() {
    let Some(flags) = namespace_flags() else {
        return;
    };
    let sweep = Sweep::new();
    let mount = sweep.shared.join("disk");
    let snapshot = sweep.shared.join("snapshot");
    let results = mount.join("out");
    let joblog = sweep.shared.join("log");
    // 1 MiB of room: case 2 alone (2 MB, spilled past the memory window) cannot fit, and
    // the six cases together (3.5 MB) cannot either.
    let sizes = [300_000, 2_000_000, 300_000, 300_000, 300_000, 300_000];
    let mut args: Vec<String> = ["-j", "2", "--results"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.push(results.display().to_string());
    args.extend(["--joblog".to_owned(), joblog.display().to_string()]);
    args.extend(["head -c {} /dev/zero".to_owned(), ":::".to_owned()]);
    args.extend(sizes.iter().map(ToString::to_string));
    let out = on_a_small_tmpfs(flags, &sweep.command(&args), &mount, "1m", None, &snapshot);
    let stderr = String::from_utf8_lossy(&out.stderr);
    sweep.assert_no_task_folder_left();

    // Each case that could not be kept is named, with the results folder and the cause.
    let not_kept = cases_named(&stderr, "could not be kept in");
    for line in stderr
        .lines()
        .filter(|l| l.contains("could not be kept in"))
    {
        assert!(line.contains(&format!("`{}`", results.display())), "{line}");
        assert!(line.contains("No space left on device"), "{line}");
    }
    assert!(not_kept.contains(&2), "case 2 cannot fit: {stderr}");
    // Failed cases are counted in the exit status, as any failed case is.
    assert_eq!(
        out.status.code(),
        Some(i32::try_from(not_kept.len()).unwrap()),
        "{stderr}"
    );

    // Every case folder that appears is whole; the others are nowhere.
    let kept = snapshot.join("out");
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(&kept).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let case: usize = name.parse().unwrap_or_else(|_| panic!("left: {name}"));
        present.insert(case);
        let folder = kept.join(&name);
        let printed = std::fs::metadata(folder.join("stdout")).unwrap().len();
        assert_eq!(printed, sizes[case - 1], "case {case}'s stdout");
        assert_eq!(std::fs::read(folder.join("stderr")).unwrap(), b"");
        assert_eq!(std::fs::read(folder.join("exit")).unwrap(), b"0\n");
    }
    assert!(present.is_disjoint(&not_kept), "{present:?} {not_kept:?}");
    let all: BTreeSet<usize> = (1..=sizes.len()).collect();
    assert_eq!(&present | &not_kept, all, "{stderr}");

    // The joblog has the kept cases only, so --resume runs the others again.
    let log = std::fs::read_to_string(&joblog).unwrap();
    let logged: BTreeSet<usize> = log
        .lines()
        .skip(1)
        .map(|line| line.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(logged, present, "{log}");
}

#[test]
fn a_returned_file_larger_than_the_results_disk_fails_its_case_only() {
    let Some(flags) = namespace_flags() else {
        return;
    };
    let sweep = Sweep::new();
    let mount = sweep.shared.join("disk");
    let snapshot = sweep.shared.join("snapshot");
    let results = mount.join("out");
    let results_arg = results.display().to_string();
    // One case at a time: while case 2's file fills the disk, a case running beside it
    // could fail for room as well (rightly), which made this test depend on timing.
    let args = [
        "-j",
        "1",
        "-k",
        "--results",
        &results_arg,
        "--return",
        "big",
        "head -c {} /dev/zero > big; echo made {}",
        ":::",
        "100",
        "2000000",
        "200",
    ];
    let out = on_a_small_tmpfs(flags, &sweep.command(&args), &mount, "1m", None, &snapshot);
    let stderr = String::from_utf8_lossy(&out.stderr);
    sweep.assert_no_task_folder_left();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Its output was whole, so it is printed; its folder is not kept.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "made 100\nmade 2000000\nmade 200\n"
    );
    assert_eq!(
        cases_named(&stderr, "could not be kept in"),
        BTreeSet::from([2]),
        "{stderr}"
    );
    assert!(stderr.contains("returned file"), "{stderr}");
    let kept = snapshot.join("out");
    let mut present: Vec<String> = std::fs::read_dir(&kept)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    present.sort();
    assert_eq!(present, ["1", "3"]);
    for (case, bytes) in [("1", 100), ("3", 200)] {
        let big = std::fs::metadata(kept.join(case).join("big")).unwrap();
        assert_eq!(big.len(), bytes, "case {case}");
    }
}

/// Runs `args` with local storage on a 1 MiB tmpfs (with `prefill` bytes taken); checks
/// that no task folder is left on it and returns the output.
fn with_full_local_storage(flags: &str, args: &[&str], prefill: Option<usize>) -> Output {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("big.bin"), vec![7u8; 2_000_000]).unwrap();
    let snapshot = sweep.shared.join("snapshot");
    let out = on_a_small_tmpfs(
        flags,
        &sweep.command(args),
        &sweep.local,
        "1m",
        prefill,
        &snapshot,
    );
    for entry in walk(&snapshot) {
        let depth = entry.strip_prefix(&snapshot).unwrap().components().count();
        assert!(depth <= 1, "left in local storage: {}", entry.display());
    }
    out
}

#[test]
fn a_full_local_storage_disk_fails_each_case_it_stops_and_the_run_goes_on() {
    let Some(flags) = namespace_flags() else {
        return;
    };
    let status = |out: &Output| out.status.code();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // A command fills the disk: its own failure; its folder goes, the next cases run.
    let out = with_full_local_storage(
        flags,
        &[
            "-k",
            "-j",
            "1",
            "head -c {} /dev/zero > fill && echo ok {}",
            ":::",
            "100",
            "3000000",
            "200",
        ],
        None,
    );
    assert_eq!(status(&out), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok 100\nok 200\n");
    assert!(text(&out.stderr).contains("No space left on device"));

    // Mirrored inputs larger than the disk: every case fails, naming the file. One worker,
    // so each case meets the disk as the failed copy before it left it (undone); with two,
    // the second case could find no room for its task folder at all, another failure.
    let out = with_full_local_storage(
        flags,
        &[
            "-j",
            "1",
            "--map",
            "big.bin=.",
            "cat big.bin # {}",
            ":::",
            "1",
            "2",
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(status(&out), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        cases_named(&stderr, "no space left to write"),
        BTreeSet::from([1, 2]),
        "{stderr}"
    );
    assert!(stderr.contains("big.bin"), "{stderr}");

    // No room even for a task folder: each case says so, naming the variable to change.
    let out = with_full_local_storage(flags, &["echo", ":::", "1", "2", "3"], Some(2_000_000));
    let stderr = text(&out.stderr);
    assert_eq!(status(&out), Some(3), "{stderr}");
    assert_eq!(
        cases_named(&stderr, "PARALLEL_LOCAL_STORAGE"),
        BTreeSet::from([1, 2, 3]),
        "{stderr}"
    );

    // Output past the memory window spills into local storage, which is full: the case
    // fails and says where its output was cut off; nothing of it is printed half.
    let out = with_full_local_storage(
        flags,
        &["-k", "head -c {} /dev/zero", ":::", "10", "3000000"],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(status(&out), Some(1), "{stderr}");
    assert_eq!(out.stdout, vec![0u8; 10]);
    assert_eq!(
        cases_named(&stderr, "was cut off"),
        BTreeSet::from([2]),
        "{stderr}"
    );
}

/// The byte count and CRC of what `cksum` reads: `(crc, bytes)`.
fn cksum(stdout: &[u8]) -> (String, u64) {
    let text = String::from_utf8_lossy(stdout);
    let mut words = text.split_whitespace();
    let crc = words.next().unwrap().to_owned();
    let bytes = words.next().unwrap().parse().unwrap();
    (crc, bytes)
}

/// The largest resident set of any child this test binary has waited for, in bytes.
fn children_max_rss() -> u64 {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    u64::try_from(usage.max_rss()).unwrap() * 1024
}

/// Kills a child when dropped, so a failing test leaves nothing running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_case_printing_1_gb_is_delivered_whole_in_bounded_memory() {
    const GIGABYTE: u64 = 1_000_000_000;
    // Every child of this binary (other tests' included) stays far below this.
    const BOUND: u64 = 200 << 20;
    let sweep = Sweep::new();
    let command = format!("yes {{}} | head -c {GIGABYTE}");
    let pattern = "parvm-0123456789";
    // The same stream, made and summed outside parvm.
    let expected = Command::new("sh")
        .args(["-c", &format!("yes {pattern} | head -c {GIGABYTE} | cksum")])
        .output()
        .unwrap();
    let expected = cksum(&expected.stdout);
    assert_eq!(expected.1, GIGABYTE);

    let results = sweep.shared.join("results");
    let results_arg = results.display().to_string();
    for extra in [&[][..], &["--results", results_arg.as_str()][..]] {
        let mut args = vec!["-j", "1"];
        args.extend_from_slice(extra);
        args.extend([command.as_str(), ":::", pattern]);
        let mut parvm = Reaped(sweep.command(&args).stdout(Stdio::piped()).spawn().unwrap());
        // Summed as it arrives: this test holds none of it in memory.
        let summed = Command::new("cksum")
            .stdin(Stdio::from(parvm.0.stdout.take().unwrap()))
            .output()
            .unwrap();
        let status = parvm.0.wait().unwrap();
        assert!(status.success(), "{extra:?}: {status:?}");
        assert_eq!(cksum(&summed.stdout), expected, "{extra:?}: printed stream");
        let rss = children_max_rss();
        assert!(
            rss < BOUND,
            "{extra:?}: a process of the run grew to {} MB",
            rss >> 20
        );
        sweep.assert_no_task_folder_left();
    }
    let file = results.join("1/stdout");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), GIGABYTE);
    let summed = Command::new("cksum").arg(&file).output().unwrap();
    let (crc, bytes) = cksum(&summed.stdout);
    assert_eq!((crc, bytes), expected, "the stdout file in --results");
}
