//! Shipping inputs (`PARVM_SHIP`): hosts that do not share a mirrored root get what the map
//! matches shipped into their host cache, and their task folders are the ones shared
//! mirroring makes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_vm::{CacheMax, Config, ExitStatus, Message, Runtime, ShipMode, Spawn, TaskId, Vm};

use crate::harness::{Backend, DEADLINE, Harness, collect, ship_mode};
use crate::tasks::Described;

suite!(inputs_shipped_to_every_worker_fill_the_same_folders);

/// With `PARVM_SHIP=always` on every transport: two workers of one host, inputs of every
/// kind, the folders equal to the sources and to each other, each blob sent once.
fn inputs_shipped_to_every_worker_fill_the_same_folders(backend: Backend) {
    let _always = ship_mode(ShipMode::Always);
    let h = Harness::start(backend, 2);
    write_inputs(h.shared.path());
    // Larger than a chunk, so it travels in several frames.
    std::fs::write(h.shared.path().join("project/big.bin"), vec![3u8; 600_000]).unwrap();
    let vm = h
        .runtime()
        .vm()
        .mirror(h.shared.path().join("project/*").display().to_string(), ".")
        .build()
        .unwrap();
    let ids = vm.spawn(Spawn::task("describe", &()).count(2)).unwrap();
    assert_eq!(ids.len(), 2);
    let (outcomes, _) = collect(&vm, &ids);
    let folders: Vec<Vec<Described>> = ids.iter().map(|id| outcomes[id].value()).collect();
    assert_eq!(folders[0], folders[1]);
    let find = |name: &str| {
        folders[0]
            .iter()
            .find(|entry| entry.0 == name)
            .unwrap_or_else(|| panic!("{name} missing: {:?}", folders[0]))
            .clone()
    };
    assert_eq!(find("big.bin").4, vec![3u8; 600_000]);
    assert_eq!(find("run.sh").2, 0o755);
    assert_eq!(find("fixed.txt").2, 0o444);
    assert_eq!(find("models/amp-link.cir").4, b"amp.cir");
    assert_eq!(find("empty").1, "folder");
    let stats = vm.ship_stats();
    assert_eq!(stats.manifests, 2, "{stats:?}");
    // amp.cir and its copy, two libraries, run.sh, fixed.txt, big.bin; one host cache.
    // The empty blank.txt is not sent: a worker makes an empty blob itself.
    assert_eq!(stats.blobs, 6, "{stats:?}");
    assert_eq!(find("blank.txt").4, b"");
}

/// A runtime with a host `alpha` that shares the spawner's mirrored root and a host
/// `beta` whose mirrored root is another (empty) folder, each with local storage of its own.
struct TwoHosts {
    runtime: Option<Runtime>,
    shared: tempfile::TempDir,
    beta_local: tempfile::TempDir,
    beta_root: tempfile::TempDir,
    local: tempfile::TempDir,
}

impl TwoHosts {
    fn start(mode: ShipMode, beta_workers: usize) -> TwoHosts {
        TwoHosts::start_with(mode, beta_workers, None, 0)
    }

    fn start_with(
        mode: ShipMode,
        beta_workers: usize,
        beta_cache: Option<CacheMax>,
        replacements: u32,
    ) -> TwoHosts {
        let local = tempfile::tempdir().unwrap();
        let shared = tempfile::tempdir().unwrap();
        let beta_local = tempfile::tempdir().unwrap();
        let beta_root = tempfile::tempdir().unwrap();
        let spawner = Config::builder()
            .local_root(local.path())
            .mirrored_roots([shared.path()])
            .hostname("spawner")
            .ship(mode)
            .build()
            .unwrap();
        let mut beta = Config::builder()
            .local_root(beta_local.path())
            .mirrored_roots([beta_root.path()]);
        if let Some(max) = beta_cache {
            beta = beta.cache_max(max);
        }
        let runtime = Runtime::builder(crate::tasks::tasks())
            .config(spawner)
            .simulated_hosts([("alpha", 1), ("beta", beta_workers)])
            .simulated_host_config("beta", beta.build().unwrap())
            .program(env!("CARGO_BIN_EXE_parvm-vm-testprog"), Vec::new())
            .replace_workers(replacements)
            .start()
            .expect("local runtime starts");
        TwoHosts {
            runtime: Some(runtime),
            shared,
            beta_local,
            beta_root,
            local,
        }
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().unwrap()
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.shared.path().join(relative)
    }

    /// The files in which the spawner keeps its hashes for the next run.
    fn spawner_hash_stores(&self) -> Vec<PathBuf> {
        let user = parvm_env_config::current_user().unwrap();
        let dir = self
            .local
            .path()
            .join(format!("parvm-{user}"))
            .join("cache/hashes");
        std::fs::read_dir(dir)
            .map(|entries| entries.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    /// beta's host cache.
    fn beta_cache(&self) -> PathBuf {
        let user = parvm_env_config::current_user().unwrap();
        self.beta_local
            .path()
            .join(format!("parvm-{user}"))
            .join("cache")
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            let _ = runtime.finalize();
        }
    }
}

/// Inputs of every kind mirroring copies: files (one executable, one read-only), a
/// folder with a subfolder, an empty folder, a symlink inside the tree.
fn write_inputs(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let project = root.join("project");
    std::fs::create_dir_all(project.join("models/deep")).unwrap();
    std::fs::create_dir_all(project.join("empty")).unwrap();
    std::fs::write(project.join("amp.cir"), "netlist v1\n").unwrap();
    std::fs::write(project.join("models/nmos.lib"), vec![7u8; 300_000]).unwrap();
    std::fs::write(project.join("models/deep/pmos.lib"), "pmos").unwrap();
    std::fs::write(project.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(
        project.join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(project.join("fixed.txt"), "read only").unwrap();
    std::fs::set_permissions(
        project.join("fixed.txt"),
        std::fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    std::os::unix::fs::symlink("amp.cir", project.join("models/amp-link.cir")).unwrap();
    std::fs::write(project.join("blank.txt"), "").unwrap();
    // The same content twice: one blob.
    std::fs::write(project.join("copy-of-amp.cir"), "netlist v1\n").unwrap();
}

/// The map shapes of the mirroring guide: a glob into the folder, a literal file to a
/// target folder, a whole folder, a glob in a subfolder.
fn maps(root: &Path) -> Vec<Vec<(String, &'static str)>> {
    let p = |s: &str| root.join(s).display().to_string();
    vec![
        vec![(p("project/*"), ".")],
        vec![(p("project/amp.cir"), "in"), (p("project/models"), "lib")],
        vec![
            (p("project/models/*.lib"), "."),
            (p("project/run.sh"), "bin"),
        ],
        vec![(p("project"), "whole")],
    ]
}

fn vm_with(runtime: &Runtime, map: &[(String, &str)], persistent: bool) -> Vm {
    let mut builder = runtime.vm().persistent(persistent);
    for (source, target) in map {
        builder = builder.mirror(source.clone(), *target);
    }
    builder.build().unwrap()
}

/// Runs `spawn` on `host` and gives its value.
fn run_on<T: serde::de::DeserializeOwned + 'static>(vm: &Vm, host: &str, spawn: Spawn) -> T {
    let ids = vm.spawn(spawn.hosts([host])).unwrap();
    assert_eq!(ids.len(), 1, "a free slot on {host}");
    let (outcomes, _) = collect(vm, &ids);
    outcomes[&ids[0]].value::<T>()
}

fn describe(vm: &Vm, host: &str) -> Vec<Described> {
    run_on(vm, host, Spawn::task("describe", &()))
}

#[test]
fn a_host_without_the_inputs_gets_them_shipped_into_the_same_folder() {
    let hosts = TwoHosts::start(ShipMode::Auto, 1);
    write_inputs(hosts.shared.path());
    let mut shipped_blobs = 0;
    let markers = || -> Vec<String> {
        std::fs::read_dir(hosts.shared.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".parvm-probe-"))
            .collect()
    };
    for map in maps(hosts.shared.path()) {
        let vm = vm_with(hosts.runtime(), &map, false);
        // The local backend's workers run on the spawner's kernel: the probe names the
        // folder, and nothing is written into the user's root.
        assert_eq!(markers(), Vec::<String>::new(), "no marker");
        let shared = describe(&vm, "alpha");
        assert_eq!(
            vm.ship_stats().manifests,
            0,
            "alpha shares the root: {map:?}"
        );
        let shipped = describe(&vm, "beta");
        assert_eq!(shipped, shared, "{map:?}");
        assert!(!shipped.is_empty());
        let stats = vm.ship_stats();
        assert_eq!(stats.manifests, 1, "{map:?}: {stats:?}");
        shipped_blobs += stats.blobs;
    }
    // Each content once for the host, whichever VM's map needed it first: amp.cir (and
    // its copy), the two libraries, run.sh, fixed.txt (the empty file is made, not sent).
    assert_eq!(shipped_blobs, 5, "{shipped_blobs}");
    // beta's own root was only read, never written.
    assert_eq!(
        std::fs::read_dir(hosts.beta_root.path()).unwrap().count(),
        0
    );
    assert!(
        hosts.beta_cache().is_dir(),
        "beta's host cache is in its local storage"
    );
}

/// A described entry without its modification time.
type Untimed = (String, String, u32, Vec<u8>);

#[test]
fn shipped_and_shared_mirroring_give_identical_folders() {
    // One host that shares the root: `always` ships it all the same, `never` reads it.
    let mut seen: Vec<Vec<Vec<Described>>> = Vec::new();
    for mode in [ShipMode::Never, ShipMode::Always] {
        let hosts = TwoHosts::start(mode, 1);
        write_inputs(hosts.shared.path());
        let mut folders = Vec::new();
        for map in maps(hosts.shared.path()) {
            for persistent in [false, true] {
                let vm = vm_with(hosts.runtime(), &map, persistent);
                folders.push(describe(&vm, "alpha"));
                if persistent {
                    // The refresh of a kept folder, after a source changed.
                    std::fs::write(hosts.path("project/amp.cir"), "netlist v2\n").unwrap();
                    folders.push(describe(&vm, "alpha"));
                    std::fs::write(hosts.path("project/amp.cir"), "netlist v1\n").unwrap();
                }
                let stats = vm.ship_stats();
                match mode {
                    ShipMode::Always => assert!(stats.manifests > 0, "{stats:?}"),
                    _ => assert_eq!(stats, Default::default()),
                }
            }
        }
        seen.push(folders);
    }
    // The modification times of the files written again differ between the runs, and the
    // folders otherwise must not.
    let without_times = |folders: &Vec<Vec<Described>>| -> Vec<Vec<Untimed>> {
        folders
            .iter()
            .map(|f| {
                f.iter()
                    .map(|(p, k, m, _, c)| (p.clone(), k.clone(), *m, c.clone()))
                    .collect()
            })
            .collect()
    };
    assert_eq!(without_times(&seen[0]), without_times(&seen[1]));
    assert!(
        seen[1]
            .iter()
            .flatten()
            .any(|(_, _, _, _, c)| c == b"netlist v2\n")
    );
}

/// A program that spawns and then does something else than receive (computes, sleeps)
/// does not pump events itself: the VM's shipping thread then passes the worker's
/// requests on, so the task gets its inputs and runs, as it would from a shared folder.
#[test]
fn a_task_gets_its_shipped_inputs_while_the_program_does_not_receive() {
    let hosts = TwoHosts::start(ShipMode::Auto, 1);
    write_inputs(hosts.shared.path());
    let vm = vm_with(hosts.runtime(), &maps(hosts.shared.path())[0], false);
    let copied = hosts.path("copied-by-the-task");
    let script = format!("cat amp.cir models/deep/pmos.lib > '{}'", copied.display());
    let ids = vm
        .spawn(Spawn::command("sh").args(["-c", &script]).hosts(["beta"]))
        .unwrap();
    assert_eq!(ids.len(), 1);
    // No call into the VM until the task has done its work.
    crate::harness::wait_until("the task ran on its shipped inputs", || {
        std::fs::read(&copied).is_ok_and(|bytes| bytes == b"netlist v1\npmos")
    });
    let (outcomes, _) = collect(&vm, &ids);
    assert!(outcomes[&ids[0]].result.as_ref().unwrap().is_ok());
    assert!(vm.ship_stats().blobs > 0, "{:?}", vm.ship_stats());
}

#[test]
fn a_source_changed_between_two_tasks_is_seen_by_the_second() {
    let hosts = TwoHosts::start(ShipMode::Auto, 1);
    write_inputs(hosts.shared.path());
    let source = hosts.path("project/amp.cir");
    for persistent in [false, true] {
        std::fs::write(&source, "netlist v1\n").unwrap();
        let vm = vm_with(
            hosts.runtime(),
            &[(source.display().to_string(), ".")],
            persistent,
        );
        let read = Spawn::task("read_then", &("amp.cir".to_string(), "keep".to_string()));
        assert_eq!(run_on::<String>(&vm, "beta", read.clone()), "netlist v1\n");
        std::fs::write(&source, "netlist v2, longer\n").unwrap();
        assert_eq!(
            run_on::<String>(&vm, "beta", read.clone()),
            "netlist v2, longer\n"
        );
        // Unchanged: no new manifest, no blob.
        let before = vm.ship_stats();
        assert_eq!(run_on::<String>(&vm, "beta", read), "netlist v2, longer\n");
        assert_eq!(vm.ship_stats(), before, "persistent: {persistent}");
        assert_eq!(before.manifests, 2, "persistent: {persistent}");
    }
}

/// A VM whose map mirrors `lib/models.lib` of the shared root, a model library of `size`
/// bytes written there; with the library's path and content.
fn vm_with_library(hosts: &TwoHosts, size: usize) -> (Vm, PathBuf, Vec<u8>) {
    std::fs::create_dir(hosts.path("lib")).unwrap();
    let source = hosts.path("lib/models.lib");
    let content: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    std::fs::write(&source, &content).unwrap();
    let vm = vm_with(
        hosts.runtime(),
        &[(source.display().to_string(), ".")],
        false,
    );
    (vm, source, content)
}

/// The content of the library among what a task described of its folder.
fn library_in(described: Vec<Described>) -> Vec<u8> {
    described
        .into_iter()
        .find(|d| d.0 == "models.lib")
        .map(|d| d.4)
        .unwrap()
}

#[test]
fn a_large_source_changed_between_two_tasks_travels_as_its_changed_pieces() {
    let hosts = TwoHosts::start(ShipMode::Auto, 1);
    let piece = parvm_ship::PIECE_MIN as usize;
    let (vm, source, mut content) = vm_with_library(&hosts, 3 * piece + 100);
    assert_eq!(library_in(describe(&vm, "beta")), content);
    let before = vm.ship_stats();
    // One line of the library edited.
    content[piece + 10] ^= 1;
    std::fs::write(&source, &content).unwrap();
    assert_eq!(library_in(describe(&vm, "beta")), content);
    let after = vm.ship_stats();
    assert_eq!(
        after.blobs, before.blobs,
        "the file was not sent whole again"
    );
    assert_eq!(after.pieces, before.pieces + 1);
    assert_eq!(after.bytes, before.bytes + parvm_ship::PIECE_MIN);
    // The spawner kept what it hashed for the next run, in its own local storage.
    assert_eq!(hosts.spawner_hash_stores().len(), 1);
}

#[test]
fn two_workers_of_one_host_get_a_changed_large_file_as_one_fetch_of_its_pieces() {
    let hosts = TwoHosts::start(ShipMode::Auto, 2);
    let piece = parvm_ship::PIECE_MIN as usize;
    let (vm, source, mut content) = vm_with_library(&hosts, 4 * piece + 7);
    let both = |vm: &Vm| {
        let ids = vm
            .spawn(Spawn::task("describe", &()).count(2).hosts(["beta"]))
            .unwrap();
        assert_eq!(ids.len(), 2);
        let (outcomes, _) = collect(vm, &ids);
        ids.iter()
            .map(|id| library_in(outcomes[id].value()))
            .collect::<Vec<_>>()
    };
    assert_eq!(both(&vm), [content.clone(), content.clone()]);
    let before = vm.ship_stats();
    // Both workers hold the older snapshot: neither patches it in place, one fetches the
    // changed pieces for the host and the other waits for it.
    content[3 * piece + 1] ^= 1;
    content[piece] ^= 1;
    std::fs::write(&source, &content).unwrap();
    assert_eq!(both(&vm), [content.clone(), content.clone()]);
    let after = vm.ship_stats();
    assert_eq!(after.blobs, before.blobs, "{after:?}");
    assert_eq!(
        after.pieces,
        before.pieces + 2,
        "one fetch for the host: {after:?}"
    );
    assert_eq!(after.bytes, before.bytes + 2 * parvm_ship::PIECE_MIN);
}

#[test]
fn two_workers_of_one_host_fetch_each_blob_once() {
    let hosts = TwoHosts::start(ShipMode::Auto, 2);
    std::fs::create_dir(hosts.path("big")).unwrap();
    // Large enough that both workers ask while the first transfer is on its way.
    let blobs = 3;
    for i in 0..blobs {
        std::fs::write(
            hosts.path(&format!("big/part{i}")),
            vec![u8::try_from(i).unwrap(); 8 << 20],
        )
        .unwrap();
    }
    let vm = vm_with(
        hosts.runtime(),
        &[(hosts.path("big").display().to_string(), "big")],
        false,
    );
    let ids = vm
        .spawn(Spawn::task("tree", &()).count(2).hosts(["beta"]))
        .unwrap();
    assert_eq!(ids.len(), 2);
    let (outcomes, _) = collect(&vm, &ids);
    for id in &ids {
        let names = outcomes[id].value::<Vec<String>>();
        assert_eq!(
            names,
            [
                "big",
                "big/big",
                "big/big/part0",
                "big/big/part1",
                "big/big/part2"
            ],
            "{id}"
        );
    }
    let stats = vm.ship_stats();
    assert_eq!(stats.manifests, 2, "{stats:?}");
    assert_eq!(
        stats.blobs, blobs,
        "one transfer per blob for the host: {stats:?}"
    );
    assert_eq!(stats.bytes, blobs * (8 << 20), "{stats:?}");
}

#[test]
fn a_worker_killed_mid_transfer_loses_its_task_and_its_replacement_works() {
    let hosts = TwoHosts::start_with(ShipMode::Auto, 1, None, 1);
    let vm = vm_with_huge_input(&hosts, 5);
    let plain = hosts.runtime().vm().build().unwrap();
    let pid: u32 = run_on(&plain, "beta", Spawn::task("pid", &()));
    let pid = Pid::from_raw(i32::try_from(pid).unwrap());
    let ids = vm.spawn(Spawn::task("tree", &()).hosts(["beta"])).unwrap();
    let exit = until_the_transfer_starts(&vm);
    kill(pid, Signal::SIGKILL).unwrap();
    let exit = exit.unwrap_or_else(|| receive_exit(&vm, ids[0]));
    assert!(
        matches!(&exit, ExitStatus::Failed { reason } if reason.contains("died")),
        "{exit:?}"
    );
    // The replacement fetches the blob (again, or what is missing of it) and runs.
    let deadline = std::time::Instant::now() + DEADLINE;
    let ids = loop {
        let ids = vm.spawn(Spawn::task("tree", &()).hosts(["beta"])).unwrap();
        if !ids.is_empty() {
            break ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replacement on beta"
        );
        let _ = vm.recv_timeout(Duration::from_millis(10)).unwrap();
    };
    let (outcomes, _) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].value::<Vec<String>>(), ["huge.bin"]);
    // Sent once, or twice when the first transfer had ended but not yet been kept.
    let blobs = vm.ship_stats().blobs;
    assert!((1..=2).contains(&blobs), "{blobs}");
}

/// A worker that stops reading mid-transfer (a stopped process, a stalled link) holds up
/// only the thread that sends to it: another host's task gets its inputs meanwhile, and
/// the stopped one gets the rest once it reads again.
#[test]
fn a_worker_that_stops_reading_holds_up_only_its_own_transfer() {
    /// Lets a stopped worker go on, also when the test fails.
    struct Continue(Pid);
    impl Drop for Continue {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let hosts = TwoHosts::start(ShipMode::Always, 1);
    let vm = vm_with_huge_input(&hosts, 9);
    let plain = hosts.runtime().vm().build().unwrap();
    let pid: u32 = run_on(&plain, "beta", Spawn::task("pid", &()));
    let pid = Pid::from_raw(i32::try_from(pid).unwrap());
    let stalled = vm.spawn(Spawn::task("tree", &()).hosts(["beta"])).unwrap();
    assert!(until_the_transfer_starts(&vm).is_none());
    kill(pid, Signal::SIGSTOP).unwrap();
    let _continue = Continue(pid);
    let ids = vm.spawn(Spawn::task("tree", &()).hosts(["alpha"])).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(receive_exit(&vm, ids[0]), ExitStatus::Completed);
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(receive_exit(&vm, stalled[0]), ExitStatus::Completed);
}

#[test]
fn a_task_stopped_while_its_inputs_travel_ends_and_the_next_gets_them_whole() {
    let hosts = TwoHosts::start_with(ShipMode::Auto, 1, None, 1);
    let vm = vm_with_huge_input(&hosts, 6);
    let plain = hosts.runtime().vm().build().unwrap();
    let pid: u32 = run_on(&plain, "beta", Spawn::task("pid", &()));
    // A command: its worker lives on when it is stopped (a function's would exit). On a
    // loaded machine the stop can come after the whole transfer and the command: then the
    // input is changed (a new transfer) and it is tried again.
    let mut tries = 0;
    let exit = loop {
        tries += 1;
        let ids = vm.spawn(Spawn::command("true").hosts(["beta"])).unwrap();
        let ended = until_the_transfer_starts(&vm);
        let exit = match ended.clone() {
            Some(exit) => exit,
            None => {
                vm.stop(ids[0]).unwrap();
                receive_exit(&vm, ids[0])
            }
        };
        let too_late = ended.is_some()
            || matches!(&exit, ExitStatus::Failed { reason } if reason.contains("just ended by itself"));
        if !too_late || tries == 5 {
            break exit;
        }
        std::fs::write(hosts.path("huge.bin"), vec![6 + tries; 64 << 20]).unwrap();
    };
    // Stopped during the fetch, not after it.
    assert!(
        matches!(&exit, ExitStatus::Failed { reason }
            if reason.contains("stopped by the spawner") && reason.contains("inputs were fetched")),
        "{exit:?} after {tries} tries"
    );
    // The same worker (not a replacement) fetches what it lacks, skipping what was still
    // on its way of the first transfer: taken into the blob, it would fail its digest.
    let again: u32 = run_on(&plain, "beta", Spawn::task("pid", &()));
    assert_eq!(again, pid, "the worker lived on");
    let ids = vm.spawn(Spawn::task("tree", &()).hosts(["beta"])).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].value::<Vec<String>>(), ["huge.bin"]);
}

/// A VM of `hosts` whose map ships one 64 MiB file of `byte`s, long enough in transit to
/// act on a task while its input travels.
fn vm_with_huge_input(hosts: &TwoHosts, byte: u8) -> Vm {
    std::fs::write(hosts.path("huge.bin"), vec![byte; 64 << 20]).unwrap();
    vm_with(
        hosts.runtime(),
        &[(hosts.path("huge.bin").display().to_string(), ".")],
        false,
    )
}

/// Receives until a shipped input of `vm` is on its way (transfers go on while the program
/// waits for messages); the exit of a task that ended meanwhile.
fn until_the_transfer_starts(vm: &Vm) -> Option<ExitStatus> {
    let mut exit = None;
    let deadline = std::time::Instant::now() + DEADLINE;
    while vm.ship_stats().bytes == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the transfer did not start"
        );
        if let Some(Message::TaskExit { status, .. }) =
            vm.recv_timeout(Duration::from_millis(1)).unwrap()
        {
            exit = Some(status);
        }
    }
    exit
}

/// The exit of `task`, from messages as they come.
fn receive_exit(vm: &Vm, task: TaskId) -> ExitStatus {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(std::time::Instant::now() < deadline, "no exit for {task}");
        if let Some(Message::TaskExit { task: t, status }) =
            vm.recv_timeout(Duration::from_millis(50)).unwrap()
            && t == task
        {
            return status;
        }
    }
}

/// Bytes of the regular files beneath `dir`, each inode once.
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    total
}

/// Two hosts, `beta` with a host cache of at most 3 MiB (and 16 entries), that limit.
fn hosts_with_a_small_cache() -> (TwoHosts, u64) {
    let limit = 3 << 20;
    let max = CacheMax {
        bytes: limit,
        count: Some(16),
    };
    (TwoHosts::start_with(ShipMode::Auto, 1, Some(max), 0), limit)
}

#[test]
fn the_host_cache_keeps_to_its_limit_across_tasks() {
    let (hosts, limit) = hosts_with_a_small_cache();
    let source = hosts.path("input.bin");
    std::fs::write(&source, vec![0u8; 1 << 20]).unwrap();
    let vm = vm_with(
        hosts.runtime(),
        &[(source.display().to_string(), ".")],
        false,
    );
    for round in 1..=6u8 {
        // New content each time: a new blob, and older ones to evict.
        std::fs::write(&source, vec![round; 1 << 20]).unwrap();
        let read: Vec<Described> = describe(&vm, "beta");
        assert_eq!(read[0].4, vec![round; 1 << 20], "round {round}");
        let used = disk_use(&hosts.beta_cache());
        assert!(
            used <= limit + (64 << 10),
            "round {round}: the cache holds {used} bytes, over its limit of {limit}"
        );
    }
    assert_eq!(vm.ship_stats().blobs, 6);
}

#[test]
fn a_vm_that_ends_lets_its_workers_bring_the_host_cache_back_within_its_limit() {
    let (hosts, limit) = hosts_with_a_small_cache();
    let (first, second) = (hosts.path("first.bin"), hosts.path("second.bin"));
    std::fs::write(&first, vec![1u8; 2 << 20]).unwrap();
    std::fs::write(&second, vec![2u8; 2 << 20]).unwrap();
    let vm_of = |source: &Path| {
        vm_with(
            hosts.runtime(),
            &[(source.display().to_string(), ".")],
            false,
        )
    };
    let (ending, going_on) = (vm_of(&first), vm_of(&second));
    describe(&ending, "beta");
    // Both snapshots are held by the worker (one per VM) and kept over the limit.
    describe(&going_on, "beta");
    assert!(disk_use(&hosts.beta_cache()) > limit);
    drop(ending);
    // The worker reads the end of the first VM before this task.
    describe(&going_on, "beta");
    let used = disk_use(&hosts.beta_cache());
    assert!(
        used <= limit + (64 << 10),
        "the cache holds {used} bytes, over its limit of {limit}, after the VM that held the rest ended"
    );
}

#[test]
fn a_tcp_worker_with_its_own_root_gets_the_inputs_shipped() {
    let mut h = crate::harness::Harness::start(crate::harness::Backend::Tcp, 0);
    std::fs::write(h.shared.path().join("in.txt"), "over tcp").unwrap();
    let own_local = tempfile::tempdir().unwrap();
    let own_root = tempfile::tempdir().unwrap();
    h.start_tcp_worker_in("far", own_local.path(), own_root.path());
    h.runtime().wait_for_workers(1, DEADLINE).unwrap();
    let vm = h
        .runtime()
        .vm()
        .mirror(h.shared.path().join("in.txt").display().to_string(), ".")
        .build()
        .unwrap();
    let read = || Spawn::task("read_then", &("in.txt".to_string(), "keep".to_string()));
    assert_eq!(run_on::<String>(&vm, "far", read()), "over tcp");
    assert_eq!(vm.ship_stats().blobs, 1);
    // A TCP worker's kernel is not known to be the spawner's: the spawner wrote a marker
    // into the root, which a worker whose root is that folder finds and reads directly.
    let shared_root = h.shared.path().to_owned();
    let markers = || -> Vec<String> {
        std::fs::read_dir(&shared_root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".parvm-probe-"))
            .collect()
    };
    assert_eq!(markers().len(), 1, "the VM's marker, while it lives");
    let near_local = tempfile::tempdir().unwrap();
    h.start_tcp_worker_in("near", near_local.path(), &shared_root);
    h.runtime().wait_for_workers(2, DEADLINE).unwrap();
    assert_eq!(run_on::<String>(&vm, "near", read()), "over tcp");
    let stats = vm.ship_stats();
    assert_eq!(
        (stats.manifests, stats.blobs),
        (1, 1),
        "near reads the root"
    );
    drop(vm);
    assert_eq!(markers(), Vec::<String>::new(), "removed with the VM");
}

#[test]
fn a_source_the_spawner_cannot_ship_fails_the_task_until_it_is_fixed() {
    let hosts = TwoHosts::start(ShipMode::Auto, 1);
    std::fs::create_dir(hosts.path("project")).unwrap();
    std::fs::write(hosts.path("project/a.cir"), "netlist").unwrap();
    let fifo = hosts.path("project/pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let vm = vm_with(
        hosts.runtime(),
        &[(hosts.path("project/*").display().to_string(), ".")],
        false,
    );
    let ids = vm.spawn(Spawn::task("tree", &()).hosts(["beta"])).unwrap();
    let exit = receive_exit(&vm, ids[0]);
    assert!(
        matches!(&exit, ExitStatus::Failed { reason } if reason.contains("pipe") && reason.contains("cannot ship")),
        "{exit:?}"
    );
    std::fs::remove_file(&fifo).unwrap();
    let names: Vec<String> = run_on(&vm, "beta", Spawn::task("tree", &()));
    assert_eq!(names, ["a.cir"]);
}

/// A child process killed when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_tcp_worker_in_another_network_namespace_gets_the_inputs_shipped() {
    let Some(netns) = parvm_test_support::netns::NetNs::make("pvs") else {
        eprintln!("SKIPPING: cannot make a network namespace (needs root and `ip`)");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let (local, shared) = (scratch.path().join("local"), scratch.path().join("shared"));
    let (far_local, far_root) = (
        scratch.path().join("far-local"),
        scratch.path().join("far-root"),
    );
    for dir in [&local, &shared, &far_local, &far_root] {
        std::fs::create_dir(dir).unwrap();
    }
    write_inputs(&shared);
    let secret_file = scratch.path().join("secret");
    let secret = parvm_transport::tcp::Secret::load_or_create(&secret_file).unwrap();
    let runtime = Runtime::builder(crate::tasks::tasks())
        .config(crate::harness::config(&local, &shared, "spawner"))
        .backend(parvm_vm::Backend::Tcp(
            parvm_vm::TcpSpawner::new()
                .listen((netns.host_addr, 0).into())
                .secret(secret),
        ))
        .start()
        .unwrap();
    let addr = runtime.tcp_addr().unwrap();
    let _worker = ChildGuard(
        crate::harness::far_worker_in(&netns.name, addr, &secret_file, &far_local, &far_root)
            .spawn()
            .unwrap(),
    );
    runtime.wait_for_workers(1, DEADLINE).unwrap();
    let vm = runtime
        .vm()
        .mirror(shared.join("project").display().to_string(), ".")
        .build()
        .unwrap();
    let folder = describe(&vm, "far");
    assert!(
        folder
            .iter()
            .any(|(path, _, _, _, content)| path == "project/amp.cir" && content == b"netlist v1\n"),
        "{folder:?}"
    );
    assert!(vm.ship_stats().blobs > 0, "{:?}", vm.ship_stats());
    drop(vm);
    runtime.finalize().unwrap();
}
