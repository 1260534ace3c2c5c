//! Returned files, the worker's side: when a task that asked for files back
//! ([`Spawn::returning`](crate::Spawn::returning)) ends, the files its patterns match in
//! the task folder are streamed to the spawner before the task's `Done`.
//!
//! Matching and opening are mirror-fs's ([`ReturnSource`]: beneath the task folder, never
//! through a symlink). Each file goes as a [`FromWorker::FileStart`], chunks of at most
//! [`CHUNK`] bytes ([`FromWorker::FileData`]), each taking credit from the output window
//! ([`crate::link`]) so a fast worker cannot grow the spawner's memory, and a
//! [`FromWorker::FileEnd`]; a file of at most [`wire::WHOLE_FILE`] bytes goes as one
//! [`FromWorker::FileWhole`] instead. A file whose size or times moved while it was read is sent
//! again, up to [`TRIES`] times. When the spawner cannot write them (a full disk), it says
//! so among the acknowledgements ([`wire::return_stop`]) and the worker sends no more. It
//! must not know the spawner's side or the slot table.

use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use parvm_mirror_fs::{FileSig, ReturnSource};

use crate::error::one_line as error_chain;
use crate::link::Link;
use crate::wire::{self, FromWorker};

/// Largest chunk of a returned file in one frame.
pub(crate) const CHUNK: usize = 256 * 1024;

/// How many times a file that changes while it is sent is sent, before returning fails.
pub(crate) const TRIES: u32 = 4;

/// A test seam: called with each returned file's path after it was read and before it is
/// checked for changes (as mirror-fs's `after_copy`).
static AFTER_READ: Mutex<Option<fn(&Path)>> = Mutex::new(None);

/// Sets (or clears) the hook called in this process after each returned file is read and
/// before it is checked for changes; for tests that change a file while it is sent.
#[doc(hidden)]
pub fn set_return_hook(hook: Option<fn(&Path)>) {
    *AFTER_READ.lock().unwrap_or_else(PoisonError::into_inner) = hook;
}

/// Sends the files `patterns` match in `task_dir` for task `number`; `Err` with the reason
/// (naming the file or pattern, and what to do) when returning fails. `startup` is the
/// folder the task ran in, to say so when a pattern names a file only there.
pub(crate) fn send_files(
    link: &Link,
    number: u64,
    task_dir: &Path,
    startup: &Path,
    patterns: &[String],
) -> Result<(), String> {
    let source = ReturnSource::open(task_dir).map_err(|e| error_chain(&e))?;
    let files = source
        .expand(patterns)
        .map_err(|e| explain_missing(&source, startup, e))?;
    let (head, buf) = match wire::file_data_head(number) {
        Some(mut head) => {
            // The frame itself: the head, the length, then the chunk read in place.
            let head_len = head.len() + 4;
            head.resize(head_len + CHUNK, 0);
            (Some(head_len), head)
        }
        None => (None, vec![0; CHUNK]),
    };
    let mut sender = Sender {
        link,
        number,
        scratch: Vec::new(),
        buf,
        head,
    };
    for rel in files {
        sender.send_file(&source, &rel)?;
    }
    Ok(())
}

/// The reason returning failed with `error`; when a literal pattern named nothing in the
/// task folder but names a file in the startup folder `startup` (where the command ran and
/// wrote it: `parvm run --startup-dir`), it says which pattern to return instead, since
/// patterns are relative to the task folder.
fn explain_missing(source: &ReturnSource, startup: &Path, error: parvm_mirror_fs::Error) -> String {
    let reason = error_chain(&error);
    let parvm_mirror_fs::Error::ReturnMissing { pattern, .. } = &error else {
        return reason;
    };
    let sub = startup
        .strip_prefix(source.path())
        .ok()
        .and_then(Path::to_str)
        .filter(|sub| !sub.is_empty() && !parvm_mirror_fs::has_glob(sub.as_bytes()));
    let Some(sub) = sub else {
        return reason;
    };
    let there = format!("{sub}/{pattern}");
    match source.expand(std::slice::from_ref(&there)) {
        Ok(found) if !found.is_empty() => format!(
            "{reason}; it is in the startup folder `{sub}`, where the task ran, and return \
             patterns are relative to the task folder: return `{there}` instead"
        ),
        _ => reason,
    }
}

struct Sender<'a> {
    link: &'a Link,
    number: u64,
    scratch: Vec<u8>,
    /// Where chunks are read: a whole `FileData` frame with the data at `head` (see
    /// [`wire::file_data_head`]), else a plain buffer whose chunks are encoded.
    buf: Vec<u8>,
    head: Option<usize>,
}

impl Sender<'_> {
    fn send(&mut self, frame: &FromWorker<'_>) -> Result<(), String> {
        wire::send_frame(self.link.transport(), 0, &mut self.scratch, frame).map_err(|_| {
            "the connection to the spawner failed while files were returned".to_owned()
        })
    }

    /// Sends the `n` bytes just read as a `FileData` frame.
    fn send_chunk(&mut self, n: usize) -> Result<(), String> {
        let lost = "the connection to the spawner failed while files were returned";
        match self.head {
            Some(at) => {
                // `n` is at most CHUNK, far below `u32::MAX`.
                self.buf[at - 4..at].copy_from_slice(&(n as u32).to_be_bytes());
                self.link
                    .transport()
                    .send(0, &self.buf[..at + n])
                    .map_err(|_| lost.to_owned())
            }
            None => {
                let frame = FromWorker::FileData {
                    number: self.number,
                    data: self.buf[..n].into(),
                };
                wire::send_frame(self.link.transport(), 0, &mut self.scratch, &frame)
                    .map_err(|_| lost.to_owned())
            }
        }
    }

    /// Sends a small file in one frame; `false` (nothing sent) when it changed while read.
    fn send_whole(
        &mut self,
        file: &mut std::fs::File,
        before: &FileSig,
        rel: &Path,
        path: &Path,
    ) -> Result<bool, String> {
        let mut data = Vec::new();
        // One byte past the limit shows a file that grew since it was opened.
        file.take(wire::WHOLE_FILE + 1)
            .read_to_end(&mut data)
            .map_err(|e| {
                format!(
                    "cannot read returned file `{}`: {e}; check that the task leaves it readable",
                    path.display()
                )
            })?;
        let hook = *AFTER_READ.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hook) = hook {
            hook(path);
        }
        let after = FileSig::of(file).map_err(|e| {
            format!(
                "cannot look at returned file `{}` again: {e}",
                path.display()
            )
        })?;
        if data.len() as u64 != before.size || after != *before {
            return Ok(false);
        }
        if !self.link.take_credit(data.len() as u64) {
            return Err("the spawner is gone".to_owned());
        }
        if self.link.returning_stopped(self.number) {
            // The spawner could not write (its reason fails the task): send no more.
            return Err("the spawner stopped receiving the files".to_owned());
        }
        self.send(&FromWorker::FileWhole {
            number: self.number,
            path: rel.as_os_str().as_encoded_bytes().to_vec(),
            data: data.as_slice().into(),
            mode: before.mode,
            mtime: before.mtime,
        })?;
        Ok(true)
    }

    /// Sends one file, again when it changed while read.
    fn send_file(&mut self, source: &ReturnSource, rel: &Path) -> Result<(), String> {
        let path = source.path().join(rel);
        for _ in 0..TRIES {
            let (mut file, before) = source.open_file(rel).map_err(|e| error_chain(&e))?;
            if before.size <= wire::WHOLE_FILE {
                if self.send_whole(&mut file, &before, rel, &path)? {
                    return Ok(());
                }
                tracing::debug!(
                    "`{}` changed while it was returned; sending it again",
                    path.display()
                );
                continue;
            }
            self.send(&FromWorker::FileStart {
                number: self.number,
                path: rel.as_os_str().as_encoded_bytes().to_vec(),
                size: before.size,
            })?;
            let mut sent = 0u64;
            let at = self.head.unwrap_or(0);
            loop {
                let n = match file.read(&mut self.buf[at..]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(format!(
                            "cannot read returned file `{}`: {e}; check that the task leaves it readable",
                            path.display()
                        ));
                    }
                };
                if !self.link.take_credit(n as u64) {
                    return Err("the spawner is gone".to_owned());
                }
                if self.link.returning_stopped(self.number) {
                    // The spawner could not write (its reason fails the task): send no more.
                    return Err("the spawner stopped receiving the files".to_owned());
                }
                self.send_chunk(n)?;
                sent += n as u64;
            }
            let hook = *AFTER_READ.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hook) = hook {
                hook(&path);
            }
            let after = FileSig::of(&file).map_err(|e| {
                format!(
                    "cannot look at returned file `{}` again: {e}",
                    path.display()
                )
            })?;
            let changed = sent != before.size || after != before;
            self.send(&FromWorker::FileEnd {
                number: self.number,
                mode: before.mode,
                mtime: before.mtime,
                changed,
            })?;
            if !changed {
                return Ok(());
            }
            tracing::debug!(
                "`{}` changed while it was returned; sending it again",
                path.display()
            );
        }
        Err(format!(
            "returned file `{}` changed while it was sent, {TRIES} times in a row; have the task finish writing it (and stop what it started in the background) before it ends",
            path.display()
        ))
    }
}
