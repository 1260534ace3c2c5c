//! What comes back from a task besides its value, the spawner's side: returned files
//! written under the results folder, and captured command output ([`Captured`]).
//!
//! [`Returns`] keeps, per task that asked for either, where its files go, the file being
//! written ([`PendingFile`]: a temporary name, renamed into place when complete), and its
//! captured streams (in memory up to [`CAPTURE_IN_MEMORY`] bytes each, then in a file).
//! When the task's `Done` arrives, [`Returns::finish`] gives the messages that go before
//! its exit, and the failure that turns its exit into `Failed`.
//!
//! Everything a worker sends here is untrusted: a path must be plain and relative
//! (mirror-fs's [`ResultsDir`] checks it and never writes through a symlink), frames for
//! a task that asked for nothing are dropped. It runs under the state lock from
//! [`crate::route`]; it must not know the transport, the wire or the slot table.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parvm_mirror_fs::{PendingFile, ResultsDir};

use crate::error::one_line as error_chain;
use crate::streamed::{self, OutputStream};
use crate::{Message, TaskId};

/// Bytes of each captured stream kept in memory; past this, the stream goes to a file.
pub const CAPTURE_IN_MEMORY: usize = 1 << 20;

/// A captured stream of a command ([`Spawn::capture`](crate::Spawn::capture)): in memory
/// when it was small, else in a file.
pub struct Captured {
    data: Data,
}

enum Data {
    Memory(Vec<u8>),
    File {
        path: PathBuf,
        len: u64,
        /// In local storage, removed with this value; a file in the results folder stays.
        temporary: bool,
    },
}

impl Captured {
    /// The bytes, when they are in memory (at most
    /// [`CAPTURE_IN_MEMORY`]); `None` when they spilled into a
    /// file ([`path`](Self::path)).
    #[must_use]
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Memory(bytes) => Some(bytes),
            Data::File { .. } => None,
        }
    }

    /// The file the stream spilled into: `<results_dir>/stdout` or `stderr`, which stays,
    /// or a file in the spawner's local storage, removed when this value is dropped.
    /// `None` when the bytes are in memory.
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        match &self.data {
            Data::Memory(_) => None,
            Data::File { path, .. } => Some(path),
        }
    }

    /// How many bytes the stream holds.
    #[must_use]
    pub fn len(&self) -> u64 {
        match &self.data {
            Data::Memory(bytes) => bytes.len() as u64,
            Data::File { len, .. } => *len,
        }
    }

    /// Whether the command wrote nothing to the stream.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All the bytes, from memory or read from the file.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read_to_vec(&self) -> io::Result<Vec<u8>> {
        match &self.data {
            Data::Memory(bytes) => Ok(bytes.clone()),
            Data::File { path, .. } => std::fs::read(path),
        }
    }
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.data {
            Data::Memory(bytes) => write!(f, "Captured({} B in memory)", bytes.len()),
            Data::File { path, len, .. } => {
                write!(f, "Captured({len} B in `{}`)", path.display())
            }
        }
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        if let Data::File {
            path,
            temporary: true,
            ..
        } = &self.data
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What a task that asked for files or output back gets on the spawner.
pub(crate) struct Wanted {
    /// Where its files (and spilled output) go; already the task's own folder when the
    /// spawn had a count above 1.
    pub results: Option<PathBuf>,
    /// Whether it returns files.
    pub returning: bool,
    /// Whether its output is captured (commands only).
    pub capture: bool,
    /// Whether its output goes to its VM as it comes, in whole lines (commands only).
    pub stream: bool,
    /// The local root, for spilled output without a results folder.
    pub local_root: PathBuf,
}

/// One captured stream while the task runs.
#[derive(Default)]
struct Stream {
    memory: Vec<u8>,
    file: Option<(File, PathBuf, bool)>,
    len: u64,
}

/// The state of one task.
struct Inbound {
    wanted: Wanted,
    dir: Option<ResultsDir>,
    current: Option<PendingFile>,
    files: Vec<PathBuf>,
    bytes: u64,
    /// Why returning failed, first reason only; later frames of the task are dropped.
    failed: Option<String>,
    /// That first failure was the worker's ([`Returns::failed`]): the task folder did not
    /// have what was to be returned, while what arrived here was kept whole.
    failed_on_worker: bool,
    /// The worker was told to send no more ([`Returns::take_stop`]).
    stop_sent: bool,
    streams: [Stream; 2],
    /// The partial last line of each stream, when its output is streamed.
    partial: [Vec<u8>; 2],
}

/// What [`Returns::finish`] gives for a task: the messages to file before its exit, and
/// why its exit is a failure.
pub(crate) struct Finished {
    pub messages: Vec<Message>,
    pub failure: Option<String>,
    /// The failure arose on the worker: the task's own (a file it was to return is
    /// missing, cannot be read, or leaves its folder), and everything that came back was
    /// kept; otherwise what came back could not all be kept here.
    pub failure_on_worker: bool,
}

/// Per task, what comes back besides its value; see the [module docs](self).
#[derive(Default)]
pub(crate) struct Returns {
    tasks: HashMap<TaskId, Inbound>,
}

impl Returns {
    /// Task `task` asks for `wanted`.
    pub(crate) fn register(&mut self, task: TaskId, wanted: Wanted) {
        self.tasks.insert(
            task,
            Inbound {
                wanted,
                dir: None,
                current: None,
                files: Vec::new(),
                bytes: 0,
                failed: None,
                failed_on_worker: false,
                stop_sent: false,
                streams: [Stream::default(), Stream::default()],
                partial: [Vec::new(), Vec::new()],
            },
        );
    }

    /// The entry of `task` while returning has not failed.
    fn live(&mut self, task: TaskId) -> Option<&mut Inbound> {
        self.tasks
            .get_mut(&task)
            .filter(|t| t.wanted.returning && t.failed.is_none())
    }

    /// A file of `task` starts (again, when it was sent before and changed).
    pub(crate) fn file_start(&mut self, task: TaskId, path: &[u8]) {
        let Some(inbound) = self.live(task) else {
            return;
        };
        inbound.current = None;
        let rel = Path::new(OsStr::from_bytes(path));
        if let Err(reason) = inbound.begin(task, rel) {
            inbound.fail(reason);
        }
    }

    /// The next bytes of the file of `task` that started last.
    pub(crate) fn file_data(&mut self, task: TaskId, data: &[u8]) {
        let Some(inbound) = self.live(task) else {
            return;
        };
        let written = match inbound.current.as_mut() {
            Some(file) => file.write_all(data).map_err(|e| error_chain(&e)),
            None => Err("a worker sent file data before its file started; run the same parvm version on the spawner and every worker".to_owned()),
        };
        if let Err(reason) = written {
            inbound.fail(reason);
        }
    }

    /// The file of `task` that started last is complete, or changed while it was read.
    pub(crate) fn file_end(&mut self, task: TaskId, mode: u32, mtime: (i64, i64), changed: bool) {
        let Some(inbound) = self.live(task) else {
            return;
        };
        let Some(file) = inbound.current.take() else {
            return;
        };
        if changed {
            // Dropped unfinished: the temporary file is removed; the worker sends it again.
            return;
        }
        let rel = file
            .path()
            .strip_prefix(inbound.dir.as_ref().map_or(Path::new(""), ResultsDir::path))
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| file.path().to_path_buf());
        let bytes = file.written();
        match file.finish(mode, mtime) {
            Ok(()) => {
                inbound.files.push(rel);
                inbound.bytes += bytes;
            }
            Err(e) => inbound.fail(error_chain(&e)),
        }
    }

    /// Whether the worker of `task` is to be told to send no more files, once: writing them
    /// failed here.
    pub(crate) fn take_stop(&mut self, task: TaskId) -> bool {
        match self.tasks.get_mut(&task) {
            Some(inbound) if inbound.failed.is_some() && !inbound.stop_sent => {
                inbound.stop_sent = true;
                true
            }
            _ => false,
        }
    }

    /// Returning failed on the worker.
    pub(crate) fn failed(&mut self, task: TaskId, reason: String) {
        if let Some(inbound) = self.live(task) {
            inbound.fail(reason);
            inbound.failed_on_worker = true;
            // The worker has stopped by itself.
            inbound.stop_sent = true;
        }
    }

    /// Keeps output of `task` when it is captured; `false` when it is to be printed.
    pub(crate) fn capture(&mut self, task: TaskId, stderr: bool, data: &[u8]) -> bool {
        if self.tasks.is_empty() {
            return false;
        }
        let Some(inbound) = self.tasks.get_mut(&task).filter(|t| t.wanted.capture) else {
            return false;
        };
        if let Err(reason) = inbound.keep(task, usize::from(stderr), data)
            && inbound.failed.is_none()
        {
            inbound.failed = Some(reason);
        }
        true
    }

    /// Whether output of `task` is streamed to its VM ([`Returns::stream`]).
    pub(crate) fn streams(&self, task: TaskId) -> bool {
        !self.tasks.is_empty() && self.tasks.get(&task).is_some_and(|t| t.wanted.stream)
    }

    /// Output of a streamed task: the whole lines that can go to its VM now, if any (see
    /// [`crate::streamed`]); the rest of the last line waits.
    pub(crate) fn stream(
        &mut self,
        task: TaskId,
        stream: OutputStream,
        data: &[u8],
    ) -> Option<Message> {
        let inbound = self.tasks.get_mut(&task).filter(|t| t.wanted.stream)?;
        let data = streamed::whole_lines(&mut inbound.partial[stream.index()], data)?;
        Some(Message::Output { task, stream, data })
    }

    /// Task `task` ended: the messages for its VM before its exit, and why returning
    /// failed. `None` when the task asked for nothing.
    pub(crate) fn finish(&mut self, task: TaskId) -> Option<Finished> {
        // The common case, on every task's end: nobody asked for anything, no hashing.
        if self.tasks.is_empty() {
            return None;
        }
        let mut inbound = self.tasks.remove(&task)?;
        // A file cut off by a failure is removed with its temporary name.
        inbound.current = None;
        let mut messages = Vec::new();
        // The last line of a stream, which had no newline.
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let data = std::mem::take(&mut inbound.partial[stream.index()]);
            if !data.is_empty() {
                messages.push(Message::Output { task, stream, data });
            }
        }
        if inbound.wanted.capture {
            let [stdout, stderr] = std::mem::take(&mut inbound.streams);
            messages.push(Message::Captured {
                task,
                stdout: stdout.into_captured(),
                stderr: stderr.into_captured(),
            });
        }
        if inbound.wanted.returning {
            messages.push(Message::Returned {
                task,
                files: std::mem::take(&mut inbound.files),
                bytes: inbound.bytes,
            });
        }
        Some(Finished {
            messages,
            failure: inbound.failed.take(),
            failure_on_worker: inbound.failed_on_worker,
        })
    }

    /// Task `task` will not finish (its worker is lost, or its VM is gone): what it wrote
    /// in full stays, a file cut off is removed, spilled temporary output is removed.
    pub(crate) fn forget(&mut self, task: TaskId) {
        if let Some(mut inbound) = self.tasks.remove(&task) {
            for stream in &mut inbound.streams {
                if let Some((_, path, true)) = stream.file.take() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl Inbound {
    fn fail(&mut self, reason: String) {
        self.current = None;
        if self.failed.is_none() {
            self.failed = Some(reason);
        }
    }

    /// Opens the results folder on first use, then the temporary file for `rel`.
    fn begin(&mut self, task: TaskId, rel: &Path) -> Result<(), String> {
        let dir = match &mut self.dir {
            Some(dir) => dir,
            slot => {
                let Some(results) = &self.wanted.results else {
                    return Err("a worker returned a file for a spawn without a results folder; run the same parvm version on the spawner and every worker".to_owned());
                };
                slot.insert(ResultsDir::create(results).map_err(|e| error_chain(&e))?)
            }
        };
        let tag = format!("{}.{}", task.slot, task.number);
        self.current = Some(dir.begin(rel, &tag).map_err(|e| error_chain(&e))?);
        Ok(())
    }

    /// Appends captured output to stream `index` (0 stdout, 1 stderr).
    fn keep(&mut self, task: TaskId, index: usize, data: &[u8]) -> Result<(), String> {
        let name = ["stdout", "stderr"][index];
        let results = self.wanted.results.clone();
        let local_root = self.wanted.local_root.clone();
        let stream = &mut self.streams[index];
        stream.len += data.len() as u64;
        if stream.file.is_none() && stream.memory.len() + data.len() <= CAPTURE_IN_MEMORY {
            stream.memory.extend_from_slice(data);
            return Ok(());
        }
        if stream.file.is_none() {
            let (file, path, temporary) = spill_file(results.as_deref(), &local_root, task, name)?;
            stream.file = Some((file, path, temporary));
            let memory = std::mem::take(&mut stream.memory);
            stream.write(&memory)?;
        }
        stream.write(data)
    }
}

impl Stream {
    fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let Some((file, path, _)) = &mut self.file else {
            return Ok(());
        };
        file.write_all(data).map_err(|e| {
            format!(
                "cannot write captured output into `{}`: {e}; free space there or give the spawn another results folder",
                path.display()
            )
        })
    }

    fn into_captured(mut self) -> Captured {
        match self.file.take() {
            None => Captured {
                data: Data::Memory(std::mem::take(&mut self.memory)),
            },
            Some((_, path, temporary)) => Captured {
                data: Data::File {
                    path,
                    len: self.len,
                    temporary,
                },
            },
        }
    }
}

/// The file a captured stream spills into: `<results>/<name>`, or a new file in the
/// spawner's local storage (its per-user folder).
fn spill_file(
    results: Option<&Path>,
    local_root: &Path,
    task: TaskId,
    name: &str,
) -> Result<(File, PathBuf, bool), String> {
    let (path, temporary) = match results {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "cannot create results folder `{}` for captured output: {e}",
                    dir.display()
                )
            })?;
            (dir.join(name), false)
        }
        None => {
            let storage =
                parvm_local_storage::LocalStorage::open(local_root).map_err(|e| error_chain(&e))?;
            let file = format!(
                ".parvm-captured-{}-{}.{}-{name}",
                std::process::id(),
                task.slot,
                task.number
            );
            (storage.path().join(file), true)
        }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).custom_flags(libc::O_NOFOLLOW);
    if temporary {
        options.create_new(true).mode(0o600);
    } else {
        options.create(true).truncate(true);
    }
    let file = options.open(&path).map_err(|e| {
        format!(
            "cannot create `{}` for captured output: {e}; check that the folder is writable (a symlink there is refused)",
            path.display()
        )
    })?;
    Ok((file, path, temporary))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: TaskId = TaskId { slot: 2, number: 9 };

    fn wanted(results: &Path, returning: bool, capture: bool) -> Wanted {
        Wanted {
            results: Some(results.to_owned()),
            returning,
            capture,
            stream: false,
            local_root: results.to_owned(),
        }
    }

    #[test]
    fn a_peer_path_that_climbs_out_fails_the_task_and_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let results = root.path().join("results");
        for bad in [&b"../evil"[..], b"/tmp/evil", b"", b"a/../../evil"] {
            let mut returns = Returns::default();
            returns.register(TASK, wanted(&results, true, false));
            returns.file_start(TASK, bad);
            returns.file_data(TASK, b"payload");
            returns.file_end(TASK, 0o644, (1, 0), false);
            let finished = returns.finish(TASK).unwrap();
            let failure = finished.failure.expect("refused");
            assert!(failure.contains("climbs out"), "{failure}");
            assert!(matches!(
                &finished.messages[..],
                [Message::Returned { files, bytes: 0, .. }] if files.is_empty()
            ));
        }
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.iter().all(|n| n == "results"), "{left:?}");
    }

    #[test]
    fn frames_for_a_task_that_asked_for_nothing_are_dropped() {
        let root = tempfile::tempdir().unwrap();
        let mut returns = Returns::default();
        returns.file_start(TASK, b"x.txt");
        returns.file_data(TASK, b"payload");
        returns.file_end(TASK, 0o644, (1, 0), false);
        assert!(!returns.capture(TASK, false, b"line\n"));
        assert!(returns.finish(TASK).is_none());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_changed_file_is_dropped_and_the_next_start_replaces_it() {
        let root = tempfile::tempdir().unwrap();
        let mut returns = Returns::default();
        returns.register(TASK, wanted(root.path(), true, false));
        returns.file_start(TASK, b"d/x.txt");
        returns.file_data(TASK, b"first");
        returns.file_end(TASK, 0o600, (5, 0), true);
        returns.file_start(TASK, b"d/x.txt");
        returns.file_data(TASK, b"second");
        returns.file_end(TASK, 0o600, (5, 0), false);
        let finished = returns.finish(TASK).unwrap();
        assert_eq!(finished.failure, None);
        assert_eq!(
            std::fs::read(root.path().join("d/x.txt")).unwrap(),
            b"second"
        );
        assert_eq!(std::fs::read_dir(root.path().join("d")).unwrap().count(), 1);
        assert!(matches!(
            &finished.messages[..],
            [Message::Returned { files, bytes: 6, .. }] if files == &[PathBuf::from("d/x.txt")]
        ));
    }

    #[test]
    fn captured_output_spills_past_the_memory_bound() {
        let root = tempfile::tempdir().unwrap();
        let mut returns = Returns::default();
        returns.register(TASK, wanted(root.path(), false, true));
        let line = vec![b'x'; 1000];
        let mut written = 0;
        while written <= CAPTURE_IN_MEMORY {
            assert!(returns.capture(TASK, false, &line));
            written += line.len();
        }
        assert!(returns.capture(TASK, true, b"err\n"));
        let finished = returns.finish(TASK).unwrap();
        let [Message::Captured { stdout, stderr, .. }] = &finished.messages[..] else {
            panic!("no captured output");
        };
        assert_eq!(stdout.bytes(), None);
        assert_eq!(stdout.len(), written as u64);
        assert_eq!(stdout.path(), Some(root.path().join("stdout").as_path()));
        assert_eq!(stdout.read_to_vec().unwrap().len(), written);
        assert_eq!(stderr.bytes(), Some(&b"err\n"[..]));
    }
}
