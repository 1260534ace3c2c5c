//! The owner marker (`.parvm-owner`) and the liveness check built on it.
//!
//! A pid alone does not say whether a folder's owner is alive: after a reboot or once
//! pids wrap, another process may carry the same number. The marker therefore also holds
//! the boot id and the process start time, which together name one process run.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// File name of the owner marker inside a task folder.
pub const OWNER_FILE: &str = ".parvm-owner";
const OWNER_TMP: &str = ".parvm-owner.tmp";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Who made a task folder: one run of one process on one boot of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OwnerMarker {
    /// The process id.
    pub pid: u32,
    /// The kernel boot id (`/proc/sys/kernel/random/boot_id`), if it could be read.
    pub boot_id: Option<String>,
    /// Start time of the process in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: Option<u64>,
    /// Host name of the owner.
    pub host: String,
}

/// Why an owner is known to be gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gone {
    OtherBoot { theirs: String, ours: String },
    NoProcess,
    PidReused { theirs: u64, now: u64 },
}

/// What the marker says about its owner, seen from this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    Gone(Gone),
    /// Made on another host that shares this local root: we cannot check its processes.
    OtherHost,
}

impl OwnerMarker {
    /// A marker naming `pid` with the given boot id, start time and host.
    pub fn new(
        pid: u32,
        boot_id: Option<String>,
        start_time: Option<u64>,
        host: impl Into<String>,
    ) -> Self {
        OwnerMarker {
            pid,
            boot_id,
            start_time,
            host: host.into(),
        }
    }

    /// The marker of the calling process on `host`.
    pub fn current(host: &str) -> Self {
        // The boot id and this process's start time never change while it runs: read
        // once per process (a forked child has another pid and reads its own), not once
        // per task folder.
        static CACHE: std::sync::Mutex<Option<OwnerMarker>> = std::sync::Mutex::new(None);
        let pid = std::process::id();
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut marker = match &*cache {
            Some(cached) if cached.pid == pid => cached.clone(),
            _ => cache
                .insert(OwnerMarker::new(pid, boot_id(), start_time(pid), ""))
                .clone(),
        };
        host.clone_into(&mut marker.host);
        marker
    }

    /// Reads the marker in `folder`. `Ok(None)`: there is none. A garbled marker is an
    /// error of kind `InvalidData`. A symlink planted in its place is not followed.
    pub(crate) fn read(folder: &Path) -> io::Result<Option<OwnerMarker>> {
        let bytes = match read_nofollow(&folder.join(OWNER_FILE)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        let marker: OwnerMarker = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if marker.pid == 0 || i32::try_from(marker.pid).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("pid {} out of range", marker.pid),
            ));
        }
        Ok(Some(marker))
    }

    /// Writes the marker into `folder` through a temporary name, so a reader sees
    /// either no marker or a whole one. No `fsync`: a marker torn by a crash names a
    /// past boot anyway and reads as garbled, which sweeping handles.
    pub(crate) fn write(&self, folder: &Path) -> io::Result<()> {
        let tmp = folder.join(OWNER_TMP);
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        fs::rename(&tmp, folder.join(OWNER_FILE))
    }

    /// Writes the marker into `folder` under its own name at once, for a folder nobody
    /// reads a marker in yet: a staging folder, which listing and sweeping judge by its
    /// name, and which gets its task-folder name only after this returned. Saves the
    /// rename of [`write`](Self::write). Refuses to replace anything (`O_EXCL`) and never
    /// writes through a symlink.
    pub(crate) fn write_unseen(&self, folder: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(folder.join(OWNER_FILE))?;
        file.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)
    }

    /// Whether the owner still runs, judged from `me`, the marker of the caller.
    pub(crate) fn liveness(&self, me: &OwnerMarker) -> Liveness {
        let same_host = self.host == me.host;
        match (&self.boot_id, &me.boot_id) {
            // Same boot id means same machine, even if a simulated host name differs.
            (Some(theirs), Some(ours)) if theirs == ours => self.process_liveness(),
            _ if !same_host => Liveness::OtherHost,
            (Some(theirs), Some(ours)) => Liveness::Gone(Gone::OtherBoot {
                theirs: theirs.clone(),
                ours: ours.clone(),
            }),
            _ => self.process_liveness(),
        }
    }

    fn process_liveness(&self) -> Liveness {
        if !pid_alive(self.pid) {
            return Liveness::Gone(Gone::NoProcess);
        }
        match (self.start_time, proc_stat(self.pid)) {
            (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => Liveness::Gone(Gone::NoProcess),
            // A zombie has exited and closed its files (its lock is free); only its
            // parent has not reaped it yet, e.g. because the parent was killed too.
            (_, Ok(stat)) if stat.exited() => Liveness::Gone(Gone::NoProcess),
            (Some(theirs), Ok(stat)) if theirs != stat.start_time => {
                Liveness::Gone(Gone::PidReused {
                    theirs,
                    now: stat.start_time,
                })
            }
            _ => Liveness::Alive,
        }
    }
}

/// Length of the boot id prefix a [`NameTag`] carries: 32 bits tell boots apart well
/// enough for a folder name, where the whole 36-character id would be noise.
const BOOT_PREFIX_LEN: usize = 8;

/// Written in a tag for a part that could not be read.
const UNKNOWN: &str = "x";

/// One process run written into a folder name: `<pid hex>.<start time hex>.<boot id
/// prefix>`, with `x` for a part that could not be read.
///
/// Trash and staging folders (`.parvm-trash-<tag>-…`, `.parvm-new-<tag>-…`) carry their
/// remover's or maker's tag in their name, because they hold no marker of their own: a
/// trash folder holds its former owner's marker, a staging folder has none for an instant.
/// The tag names the same process run an [`OwnerMarker`] does, and is judged by the same
/// [`OwnerMarker::liveness`], so a pid reused by another process does not keep such a
/// folder forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameTag {
    pid: u32,
    start_time: Option<u64>,
    boot: Option<String>,
}

impl NameTag {
    /// The tag of the calling process, read once per process (a forked child that goes on
    /// to make names reads its own).
    pub(crate) fn current() -> NameTag {
        static CACHE: std::sync::Mutex<Option<NameTag>> = std::sync::Mutex::new(None);
        let pid = std::process::id();
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*cache {
            Some(tag) if tag.pid == pid => tag.clone(),
            _ => {
                let tag = NameTag {
                    pid,
                    start_time: start_time(pid),
                    boot: boot_id().and_then(|id| boot_prefix(&id).map(str::to_owned)),
                };
                *cache = Some(tag.clone());
                tag
            }
        }
    }

    /// The tag at the start of `field` (the part of a name after its prefix, up to the
    /// first `-`). `None`: not a tag.
    pub(crate) fn parse(field: &str) -> Option<NameTag> {
        let mut parts = field.split('.');
        let (pid, start, boot) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let pid = u32::from_str_radix(pid, 16).ok()?;
        let start_time = match start {
            UNKNOWN => None,
            hex => Some(u64::from_str_radix(hex, 16).ok()?),
        };
        let boot = match boot {
            UNKNOWN => None,
            id if !id.is_empty()
                && id.len() <= BOOT_PREFIX_LEN
                && id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Some(id.to_owned())
            }
            _ => return None,
        };
        Some(NameTag {
            pid,
            start_time,
            boot,
        })
    }

    /// A tag that knows only the pid: names made before tags existed.
    pub(crate) fn pid_only(pid: u32) -> NameTag {
        NameTag {
            pid,
            start_time: None,
            boot: None,
        }
    }

    /// The pid in the tag.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the tag names its start time; without it, a live pid cannot be told from a
    /// reused one.
    pub(crate) fn knows_start_time(&self) -> bool {
        self.start_time.is_some()
    }

    /// Whether the tagged process still runs, judged from `me` exactly as a marker is.
    /// The tag has no host: a name in this per-user folder is judged on this machine.
    pub(crate) fn liveness(&self, me: &OwnerMarker) -> Liveness {
        // A tag holds only the start of the boot id: the same start is the same boot.
        let boot_id = match (&self.boot, &me.boot_id) {
            (Some(prefix), Some(ours)) if boot_prefix(ours) == Some(prefix.as_str()) => {
                Some(ours.clone())
            }
            (theirs, _) => theirs.clone(),
        };
        OwnerMarker::new(self.pid, boot_id, self.start_time, me.host.clone()).liveness(me)
    }
}

impl std::fmt::Display for NameTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}.", self.pid)?;
        match self.start_time {
            Some(start) => write!(f, "{start:x}.")?,
            None => write!(f, "{UNKNOWN}.")?,
        }
        f.write_str(self.boot.as_deref().unwrap_or(UNKNOWN))
    }
}

/// The first [`BOOT_PREFIX_LEN`] characters of a boot id (a UUID), up to the first one
/// that is not a letter or digit. `None`: nothing usable.
fn boot_prefix(id: &str) -> Option<&str> {
    let end = id
        .char_indices()
        .take_while(|&(i, c)| i < BOOT_PREFIX_LEN && c.is_ascii_alphanumeric())
        .count();
    (end > 0).then(|| &id[..end])
}

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gone::OtherBoot { theirs, ours } => {
                write!(f, "made during boot {theirs}, this is boot {ours}")
            }
            Gone::NoProcess => write!(f, "owner process is gone"),
            Gone::PidReused { theirs, now } => {
                write!(f, "owner pid was reused (start time {theirs}, now {now})")
            }
        }
    }
}

/// Whether a process `pid` exists on this machine (under any user).
fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Pid 0 and negative pids name process groups, not a process.
    // Signal 0 only checks existence; EPERM means it exists under another user.
    raw > 0 && !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Reads a small file without following a symlink in its last component.
fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut bytes = Vec::new();
    // A marker is tiny; a huge file in its place is garbage, not worth reading whole.
    Read::by_ref(&mut file)
        .take(64 * 1024)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The boot id of the running kernel, if readable.
pub(crate) fn boot_id() -> Option<String> {
    let text = fs::read_to_string(BOOT_ID).ok()?;
    Some(text.trim().to_owned()).filter(|id| !id.is_empty())
}

/// Start time of process `pid`, if readable.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    start_time_io(pid).ok()
}

fn start_time_io(pid: u32) -> io::Result<u64> {
    proc_stat(pid).map(|stat| stat.start_time)
}

/// What `/proc/<pid>/stat` says about a process: its state letter and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    start_time: u64,
}

impl ProcStat {
    /// Zombie (`Z`) or dead (`X`, `x`): the process has exited.
    fn exited(self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat format"))
}

/// Fields 3 (state) and 22 (start time) of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may itself hold spaces and `)`, so fields are counted
/// from the last `)`.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 is 19 fields after field 3.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_start_time(stat: &str) -> Option<u64> {
        parse_stat(stat).map(|parsed| parsed.start_time)
    }

    #[test]
    fn parses_start_time_with_odd_command_names() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
        for comm in ["(sh)", "(a b) c)", "())"] {
            assert_eq!(
                parse_start_time(&format!("77 {comm} {tail}")),
                Some(424242),
                "{comm}"
            );
        }
        assert_eq!(parse_start_time("77 (sh) S 1 2"), None);
        let zombie = parse_stat("77 (sh) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 9 20");
        assert_eq!(zombie.map(ProcStat::exited), Some(true));
        let running = parse_stat("77 (sh) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 9 20");
        assert_eq!(running.map(ProcStat::exited), Some(false));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn current_process_is_alive() {
        let me = OwnerMarker::current("h");
        assert!(me.start_time.is_some());
        assert!(me.boot_id.is_some());
        assert_eq!(me.liveness(&me), Liveness::Alive);
    }

    #[test]
    fn the_cached_marker_is_what_proc_says_now() {
        let cached = [OwnerMarker::current("h"), OwnerMarker::current("h")];
        let pid = std::process::id();
        let fresh = OwnerMarker::new(pid, boot_id(), start_time(pid), "h");
        assert_eq!(cached[0], fresh);
        assert_eq!(cached[1], fresh);
        assert_eq!(OwnerMarker::current("other").host, "other");
    }

    #[test]
    fn an_unseen_marker_replaces_nothing_and_follows_no_symlink() {
        let folder = tempfile::tempdir().unwrap();
        let me = OwnerMarker::current("h");
        me.write_unseen(folder.path()).unwrap();
        assert_eq!(OwnerMarker::read(folder.path()).unwrap(), Some(me.clone()));
        let again = me.write_unseen(folder.path()).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);

        let other = tempfile::tempdir().unwrap();
        let target = folder.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, other.path().join(OWNER_FILE)).unwrap();
        assert!(me.write_unseen(other.path()).is_err());
        assert!(!target.exists(), "written through a symlink");
    }

    #[test]
    fn liveness_table() {
        let me = OwnerMarker::current("h");
        let boot = me.boot_id.clone();
        let st = me.start_time.unwrap();
        let other_boot = Some("00000000-0000-0000-0000-000000000000".to_owned());
        let rows = [
            (
                OwnerMarker::new(me.pid, other_boot.clone(), Some(st), "h"),
                "other boot",
            ),
            (
                OwnerMarker::new(me.pid, boot.clone(), Some(st + 1), "h"),
                "reused",
            ),
            (
                OwnerMarker::new(me.pid, other_boot.clone(), Some(st), "elsewhere"),
                "other host",
            ),
            (
                OwnerMarker::new(me.pid, boot.clone(), Some(st), "simulated"),
                "alive",
            ),
            (OwnerMarker::new(me.pid, None, None, "h"), "alive"),
        ];
        for (marker, want) in rows {
            let got = match marker.liveness(&me) {
                Liveness::Alive => "alive",
                Liveness::OtherHost => "other host",
                Liveness::Gone(Gone::OtherBoot { .. }) => "other boot",
                Liveness::Gone(Gone::PidReused { .. }) => "reused",
                Liveness::Gone(Gone::NoProcess) => "no process",
            };
            assert_eq!(got, want, "{marker:?}");
        }
    }

    #[test]
    fn name_tags_round_trip_and_are_judged_like_markers() {
        let me = OwnerMarker::current("h");
        let tag = NameTag::current();
        assert_eq!(NameTag::parse(&tag.to_string()), Some(tag.clone()));
        assert_eq!(tag.liveness(&me), Liveness::Alive);
        let unknown = NameTag::parse("1f.x.x").unwrap();
        assert_eq!(unknown, NameTag::pid_only(0x1f));
        assert_eq!(unknown.to_string(), "1f.x.x");
        for bad in [
            "",
            "1f",
            "1f.2",
            "1f.2.3.4",
            "zz.2.abc",
            "1f.zz.abc",
            "1f.2.",
            "1f.2.a/b",
        ] {
            assert_eq!(NameTag::parse(bad), None, "{bad:?}");
        }
        let st = me.start_time.unwrap();
        let boot = boot_prefix(me.boot_id.as_deref().unwrap()).unwrap();
        let judged = |text: String| NameTag::parse(&text).unwrap().liveness(&me);
        assert_eq!(
            judged(format!("{:x}.{st:x}.{boot}", me.pid)),
            Liveness::Alive
        );
        assert!(matches!(
            judged(format!("{:x}.{:x}.{boot}", me.pid, st + 1)),
            Liveness::Gone(Gone::PidReused { .. })
        ));
        assert!(matches!(
            judged(format!("{:x}.{st:x}.0000abcd", me.pid)),
            Liveness::Gone(Gone::OtherBoot { .. })
        ));
    }

    #[test]
    fn marker_round_trips_and_rejects_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(OwnerMarker::read(tmp.path()).unwrap().is_none());
        let me = OwnerMarker::current("h");
        me.write(tmp.path()).unwrap();
        assert_eq!(OwnerMarker::read(tmp.path()).unwrap(), Some(me));
        for garbage in [
            &b"{not json"[..],
            br#"{"pid":0,"boot_id":null,"start_time":null,"host":"h"}"#,
        ] {
            fs::write(tmp.path().join(OWNER_FILE), garbage).unwrap();
            let err = OwnerMarker::read(tmp.path()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }
}
