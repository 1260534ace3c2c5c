//! [`Scanner`]: the spawner's view of one mirrored root, kept as a manifest and refreshed
//! cheaply.
//!
//! A scan `lstat`s every matched entry and hashes, in parallel, only files whose signature
//! (device, inode, size, modification and change time, mode) changed. While inotify on
//! every folder the scan read stays quiet ([`Watch`]), the next call returns the same
//! manifest without scanning; mirror-fs's persistent refresh trusts its source watch the
//! same way (local file systems only, at most `FULL_SCAN_EVERY`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Node, Timestamp};
use crate::pieces::{PieceHasher, Pieces, piece_count, piece_len};
use crate::watch::{Seen, Watch};

mod source;
pub use source::SourceBlob;

mod store;

pub(crate) use store::FOLDER as STORE_FOLDER;

/// A lone file at least this large has its pieces hashed on all cores. With several files
/// the cores hash one file each: threads splitting each file as well were 1.5x slower
/// (4 x 64 MiB on 2 cores: 67-79 ms against 44-50 ms).
const PARALLEL_HASH: u64 = 8 << 20;
/// Read size while hashing: small enough that what a read copies is still in the core's
/// cache when the hash reads it (64 MiB from the page cache on 2 cores: 9.4 ms with 128 KiB
/// reads, 11.8 ms with 1 MiB ones).
const CHUNK: usize = 128 << 10;
/// The mode of a folder in a manifest that is only on the way to a match (and of the root).
pub const WAY_MODE: u32 = 0o755;
/// Times a file that keeps changing while it is hashed is tried before it is refused.
const TRIES: usize = 3;
/// The waits before each new scan when the sources moved while they were scanned (an
/// entry gone between its listing and its reading, as an editor's temporary file renamed
/// over the file it saves, or a file still being written): at once, then mirroring's
/// [`SETTLE_WAITS`](parvm_mirror_fs::SETTLE_WAITS), so a scan sees them as they are once
/// the editor is done instead of failing the task.
const RESCAN_AFTER: [Duration; 4] = [
    Duration::ZERO,
    parvm_mirror_fs::SETTLE_WAITS[0],
    parvm_mirror_fs::SETTLE_WAITS[1],
    parvm_mirror_fs::SETTLE_WAITS[2],
];

/// What tells whether a file changed since it was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileSig {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
}

impl FileSig {
    fn of(m: &Metadata) -> FileSig {
        FileSig {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
        }
    }

    fn mtime(&self) -> Timestamp {
        timestamp(self.mtime.0, self.mtime.1)
    }
}

fn timestamp(secs: i64, nanos: i64) -> Timestamp {
    Timestamp {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

/// Spawner side, one per (VM, mirrored root). Expands the sources with mirror-fs's glob
/// rules ([`parvm_mirror_fs::expand_source_traced`]), follows a top-level symlink only into
/// the mirrored roots (as mirroring does), hashes files with BLAKE3, and on later calls
/// looks again only when the sources may have changed and rehashes only files whose
/// (device, inode, size, modification time, change time) changed; an unchanged folder
/// keeps its digest. A folder only on the way to a match (and the root) has mode
/// [`WAY_MODE`] and time 0 in the manifest: mirroring never copies it, and its real time
/// would change the root digest with every unrelated entry added beside a match.
///
/// ```
/// use parvm_ship::Scanner;
///
/// let shared = tempfile::tempdir()?;
/// std::fs::create_dir(shared.path().join("lib"))?;
/// std::fs::write(shared.path().join("lib/a.lib"), "model a")?;
/// let mut scanner = Scanner::new(vec![shared.path().to_path_buf()], 0, vec![b"lib/*.lib".to_vec()]);
/// let manifest = scanner.manifest()?;
/// assert_eq!((manifest.file_count(), manifest.total_bytes()), (1, 7));
/// let (digest, _, shown) = manifest.blobs()[0].clone();
/// assert_eq!(shown, std::path::Path::new("lib/a.lib"));
/// let source = scanner.open_blob(&digest)?;
/// assert_eq!(source.size, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Scanner {
    roots: Vec<PathBuf>,
    root: usize,
    sources: Vec<Vec<u8>>,
    /// Every file hashed so far, by the path it was read from.
    hashed: HashMap<PathBuf, (FileSig, Content)>,
    /// The blobs of the current manifest: where each is read from, and its signature then.
    blobs: HashMap<Digest, (PathBuf, FileSig)>,
    current: Option<Arc<Manifest>>,
    /// Each file of the current manifest by the path it is read from: where it is in the
    /// manifest (one path may be matched at more than one place).
    placed: HashMap<PathBuf, Vec<PathBuf>>,
    /// The symlinks of the current manifest, by the path they are read from.
    links: HashSet<PathBuf>,
    /// Watches on the folders the last scan read; while quiet, the sources did not change.
    watch: Option<Watch>,
    /// Longest a quiet watch is trusted (mirror-fs's `FULL_SCAN_EVERY`; shorter in tests).
    trust_for: Duration,
    /// Files hashed by the last call, for tests of the rehash rule.
    last_hashed: usize,
    /// Whether the last call scanned, for tests of the watch.
    last_scanned: bool,
    /// Whether the last call updated the manifest from the watch's events alone.
    last_updated: bool,
    /// Where the hashes are kept for the next run ([`keep_hashes_in`](Scanner::keep_hashes_in)),
    /// and whether they were read from there yet.
    store: Option<(PathBuf, bool)>,
    /// The per-user folder the store is beneath, checked before each write.
    store_home: Option<PathBuf>,
    /// Hashes of small files changed since the store was last written, written when the
    /// scanner goes (see `store::SAVE_AT_ONCE_FROM`).
    unsaved: bool,
    /// Run by a scan between its walk and its hashing: tests move the sources there.
    #[cfg(test)]
    after_walk: Option<Box<dyn FnMut() + Send>>,
}

impl Drop for Scanner {
    fn drop(&mut self) {
        if self.unsaved {
            self.keep_hashes();
        }
    }
}

/// What hashing a file found: its digest and, for a file of several pieces, their
/// chaining values and prints.
#[derive(Debug, Clone)]
struct Content {
    digest: Digest,
    pieces: Option<Pieces>,
    /// For a file of several pieces, the XXH3-128 of each piece; else empty. When the file
    /// changes, a scan still reads it whole (nothing tells which bytes a write touched)
    /// but hashes with BLAKE3 only the pieces whose print changed: 64 MiB with one piece
    /// changed, read and hashed on 2 cores, 5.9 ms against 8.9 ms hashing every piece.
    /// A print only tells whether a piece changed, as the signature tells whether a file
    /// did: the chaining values and digest that travel are BLAKE3's, as before.
    prints: Arc<[u128]>,
}

impl Content {
    /// The manifest's node for a file named `name` with signature `sig` and this content.
    fn node(&self, name: &[u8], sig: &FileSig) -> Result<Node> {
        let node = Node::file(name, sig.mode, sig.mtime(), sig.size, self.digest)?;
        match &self.pieces {
            Some(pieces) => node.with_pieces(pieces.clone()),
            None => Ok(node),
        }
    }
}

/// The sources' matches beneath the root, as a tree of names.
#[derive(Default)]
struct Wanted {
    /// Set when this entry itself matched: the path it is read from, and its metadata.
    whole: Option<(PathBuf, Metadata)>,
    children: BTreeMap<Vec<u8>, Wanted>,
}

/// A walked entry, before its file contents are hashed.
enum Walked {
    File {
        name: Vec<u8>,
        path: PathBuf,
        sig: FileSig,
    },
    Dir {
        name: Vec<u8>,
        mode: u32,
        mtime: Timestamp,
        children: Vec<Walked>,
    },
    Link {
        name: Vec<u8>,
        path: PathBuf,
        mode: u32,
        mtime: Timestamp,
        target: Vec<u8>,
    },
}

impl Walked {
    fn name(&self) -> &[u8] {
        match self {
            Walked::File { name, .. } | Walked::Dir { name, .. } | Walked::Link { name, .. } => {
                name
            }
        }
    }
}

/// Where a scan placed the entries it read, by the path each is read from.
#[derive(Default)]
struct Placed {
    /// Each file's places in the manifest.
    files: HashMap<PathBuf, Vec<PathBuf>>,
    /// The symlinks.
    links: HashSet<PathBuf>,
}

impl Scanner {
    /// A scanner of root `root` of `roots` (this host's mirrored roots) for `sources`, the
    /// suffixes below that root the map's sources have (they may hold globs). Nothing is
    /// read until [`manifest`](Scanner::manifest).
    pub fn new(roots: Vec<PathBuf>, root: usize, sources: Vec<Vec<u8>>) -> Scanner {
        Scanner {
            roots,
            root,
            sources,
            hashed: HashMap::new(),
            blobs: HashMap::new(),
            current: None,
            placed: HashMap::new(),
            links: HashSet::new(),
            watch: None,
            trust_for: parvm_mirror_fs::FULL_SCAN_EVERY,
            last_hashed: 0,
            last_scanned: false,
            last_updated: false,
            store: None,
            store_home: None,
            unsaved: false,
            #[cfg(test)]
            after_walk: None,
        }
    }

    /// Keeps what this scanner hashes in the file `store` (in the user's private local
    /// storage), and starts from what an earlier scanner kept there: files of at least
    /// 64 KiB whose signature (device, inode, size, times, mode) is as recorded are not
    /// hashed again, so a new run of the same map rehashes only what changed since the
    /// last. A store that cannot be read whole is ignored.
    pub fn keep_hashes_in(mut self, store: PathBuf) -> Scanner {
        self.store = Some((store, false));
        self
    }

    /// [`keep_hashes_in`](Scanner::keep_hashes_in) a store of its own beneath `user_dir`,
    /// the private per-user folder of local storage: in `cache/hashes/` (made 0700 when
    /// first written, beside the host cache, which ignores it), one file per mirrored root
    /// and set of sources, so every run of the same map finds the one before it.
    pub fn keep_hashes_under(self, user_dir: &Path) -> Scanner {
        let mut name = blake3::Hasher::new();
        name.update(b"parvm-ship hash store 1\0");
        if let Some(root) = self.roots.get(self.root) {
            name.update(root.as_os_str().as_bytes());
        }
        let mut sources = self.sources.clone();
        sources.sort();
        for source in &sources {
            name.update(b"\0");
            name.update(source);
        }
        let name = Digest::from(name.finalize()).to_string();
        let dir = user_dir.join("cache").join(store::FOLDER);
        let mut scanner = self.keep_hashes_in(dir.join(name));
        scanner.store_home = Some(user_dir.to_path_buf());
        scanner
    }

    /// Writes the hashes to the store, if there is one (its folders made private first
    /// when it is beneath a per-user folder; without them nothing is kept, and it says so).
    fn keep_hashes(&mut self) {
        self.unsaved = false;
        let Some((path, _)) = &self.store else {
            return;
        };
        if let Some(home) = &self.store_home {
            let cache = home.join("cache");
            let ready = crate::cache::verify_private(home)
                .and_then(|()| crate::cache::private_dir(&cache))
                .and_then(|()| crate::cache::private_dir(&cache.join(store::FOLDER)));
            if let Err(e) = ready {
                tracing::warn!("the hashes of shipped inputs are not kept for the next run: {e}");
                return;
            }
        }
        store::save(path, &self.hashed);
    }

    fn root_path(&self) -> Result<&Path> {
        self.roots
            .get(self.root)
            .map(PathBuf::as_path)
            .ok_or_else(|| Error::Source {
                root: PathBuf::from(format!("mirrored root {}", self.root)),
                source: parvm_mirror_fs::Error::RootIndex {
                    index: self.root,
                    count: self.roots.len(),
                },
            })
    }

    /// The manifest of what the sources match now. The first call hashes everything. A
    /// later call returns the same `Arc` at once while the watch on the folders the last
    /// scan read saw no event (local file systems, no hard-linked file, less than
    /// [`FULL_SCAN_EVERY`](parvm_mirror_fs::FULL_SCAN_EVERY) since that scan); when it saw
    /// only files' contents or attributes change (no name added, removed or moved, no
    /// folder changed), only those files are looked at and the manifest is updated along
    /// their paths; else it scans, rehashing only files whose signature changed. It
    /// returns the same `Arc` when the root digest did not change.
    ///
    /// # Errors
    /// [`Error::Source`] for a source mirroring would refuse (a literal source missing, a
    /// symlink leaving the roots, a dangling symlink, a fifo or device);
    /// [`Error::SourceChanged`] for a file that kept changing while it was hashed;
    /// [`Error::ManifestInvalid`] for a tree beyond the manifest's limits;
    /// [`Error::Io`] when reading fails.
    pub fn manifest(&mut self) -> Result<Arc<Manifest>> {
        self.last_scanned = false;
        self.last_updated = false;
        self.last_hashed = 0;
        let mut waits = RESCAN_AFTER.iter();
        loop {
            match self.look() {
                Err(e) if e.moved_while_scanned() => {
                    let Some(wait) = waits.next() else {
                        return Err(e);
                    };
                    tracing::debug!(error = %e, ?wait, "sources moved while scanned; scanning again");
                    std::thread::sleep(*wait);
                }
                looked => return looked,
            }
        }
    }

    /// One look at the sources for [`manifest`](Scanner::manifest): the watch, an update
    /// along the paths it names, or a scan.
    fn look(&mut self) -> Result<Arc<Manifest>> {
        if let (Some(current), Some(watch)) = (&self.current, &self.watch) {
            let current = Arc::clone(current);
            match watch.seen() {
                Seen::Nothing => return Ok(current),
                Seen::Entries(paths) => {
                    // Whatever it cannot vouch for (or a file that fails to hash: the
                    // scan reports it) is left to a scan.
                    if let Ok(Some(manifest)) = self.update(&current, &paths) {
                        self.last_updated = true;
                        return Ok(manifest);
                    }
                }
                Seen::Unknown => {}
            }
        }
        self.last_scanned = true;
        // A failed scan leaves no watch: the next call scans again.
        self.watch = None;
        let mut watch = Watch::start(self.trust_for);
        let root_path = self.root_path()?.to_path_buf();
        let wanted = self.wanted(&root_path, &mut watch)?;
        let root_meta = fs::metadata(&root_path).map_err(|e| Error::io("read", &root_path, e))?;
        let walked = walk_wanted(Vec::new(), &root_path, &root_meta, &wanted, &mut watch, 0)?;
        #[cfg(test)]
        if let Some(after_walk) = &mut self.after_walk {
            after_walk();
        }
        if let Some((path, loaded @ false)) = &mut self.store {
            self.hashed = store::load(path);
            *loaded = true;
        }
        let mut files = Vec::new();
        collect_files(&walked, &mut files);
        let matched: std::collections::HashSet<PathBuf> =
            files.iter().map(|(path, _)| (*path).clone()).collect();
        let stale: Vec<Stale> = files
            .into_iter()
            .filter_map(|(path, sig)| match self.hashed.get(path) {
                Some((had, _)) if had == sig => None,
                had => Some((path.clone(), *sig, had.map(|(_, content)| content.clone()))),
            })
            .collect();
        self.last_hashed = stale.len();
        for (path, sig, content) in hash_all(&stale)? {
            self.hashed.insert(path, (sig, content));
        }
        let mut blobs = HashMap::new();
        let mut placed = Placed::default();
        let root = self.build(walked, Path::new(""), &mut blobs, &mut placed)?;
        // Forget files no longer matched, so the table does not grow without bound.
        self.hashed.retain(|p, _| matched.contains(p));
        if self.last_hashed > 0 {
            self.keep_hashes();
        }
        let manifest = Manifest::new(root)?;
        self.blobs = blobs;
        (self.placed, self.links) = (placed.files, placed.links);
        self.watch = Some(watch);
        if let Some(current) = &self.current
            && current.root_digest() == manifest.root_digest()
        {
            return Ok(Arc::clone(current));
        }
        let manifest = Arc::new(manifest);
        self.current = Some(Arc::clone(&manifest));
        Ok(manifest)
    }

    /// Expands every source into the tree of matched names, watching the folders each
    /// expansion read.
    fn wanted(&self, root_path: &Path, watch: &mut Watch) -> Result<Wanted> {
        let source_err = |source| Error::Source {
            root: root_path.to_path_buf(),
            source,
        };
        let mut wanted = Wanted::default();
        for suffix in &self.sources {
            let suffix = Path::new(OsStr::from_bytes(suffix));
            if suffix
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(source_err(parvm_mirror_fs::Error::BadSuffix {
                    suffix: suffix.to_path_buf(),
                }));
            }
            let pattern = if suffix.as_os_str().is_empty() {
                root_path.to_path_buf()
            } else {
                root_path.join(suffix)
            };
            let expansion = parvm_mirror_fs::expand_source_traced(&self.roots, &pattern).map_err(
                |e| match e {
                    // A glob's match gone by the time it was checked, not a source missing.
                    parvm_mirror_fs::Error::SourceMissing { path } if path != pattern => {
                        source_err(parvm_mirror_fs::Error::SourceVanished { path })
                    }
                    e => source_err(e),
                },
            )?;
            expansion.folders().for_each(|dir| watch.add(dir));
            // A folder that changed between its listing and its watch sent no event.
            if !expansion.unchanged() {
                watch.spoil();
            }
            for (path, meta) in expansion.into_matches() {
                let rel = path.strip_prefix(root_path).map_err(|_| {
                    source_err(parvm_mirror_fs::Error::NoRoot {
                        path: path.clone(),
                        roots: root_path.display().to_string(),
                    })
                })?;
                let mut at = &mut wanted;
                for part in rel.components() {
                    at = at
                        .children
                        .entry(part.as_os_str().as_bytes().to_vec())
                        .or_default();
                }
                // A followed top-level symlink is read through its target, never through the link.
                let read_from =
                    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                        fs::canonicalize(&path).map_err(|e| Error::io("resolve", &path, e))?
                    } else {
                        path
                    };
                // A matched file changes in its folder, which no expansion may have read.
                if !meta.is_dir()
                    && let Some(parent) = read_from.parent()
                {
                    watch.add(parent);
                }
                at.whole = Some((read_from, meta));
            }
        }
        Ok(wanted)
    }

    /// Turns walked entries into nodes with the digests now in `hashed`, noting each blob.
    fn build(
        &self,
        walked: Walked,
        at: &Path,
        blobs: &mut HashMap<Digest, (PathBuf, FileSig)>,
        placed: &mut Placed,
    ) -> Result<Node> {
        match walked {
            Walked::File { name, path, sig: _ } => {
                placed
                    .files
                    .entry(path.clone())
                    .or_default()
                    .push(at.to_path_buf());
                let Some((sig_hashed, content)) = self.hashed.get(&path) else {
                    return Err(Error::SourceChanged { path });
                };
                let node = content.node(&name, sig_hashed)?;
                blobs.entry(content.digest).or_insert((path, *sig_hashed));
                Ok(node)
            }
            Walked::Dir {
                name,
                mode,
                mtime,
                children,
            } => {
                let children = children
                    .into_iter()
                    .map(|c| {
                        let below = at.join(OsStr::from_bytes(c.name()));
                        self.build(c, &below, blobs, placed)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Node::dir(&name, mode, mtime, children)
            }
            Walked::Link {
                name,
                path,
                mode,
                mtime,
                target,
            } => {
                placed.links.insert(path);
                Node::symlink(&name, mode, mtime, &target)
            }
        }
    }

    /// The manifest after only the entries at `paths` (in watched folders) changed their
    /// content or attributes, as the watch saw: each file of the manifest among them is
    /// looked at again and rehashed when its signature changed, and the manifest updated
    /// along its paths. `None` when that cannot stand for a scan: a symlink of the
    /// manifest among them, or a file that is no longer a file or has become hard-linked.
    /// Entries the manifest does not hold are skipped: their names, and so the matches,
    /// are as before.
    fn update(&mut self, current: &Manifest, paths: &[PathBuf]) -> Result<Option<Arc<Manifest>>> {
        let mut stale = Vec::new();
        for path in paths {
            if self.links.contains(path) {
                return Ok(None);
            }
            if !self.placed.contains_key(path) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(path) else {
                return Ok(None);
            };
            if !meta.is_file() || meta.nlink() > 1 {
                return Ok(None);
            }
            let sig = FileSig::of(&meta);
            match self.hashed.get(path) {
                Some((had, _)) if *had == sig => {}
                had => stale.push((path.clone(), sig, had.map(|(_, content)| content.clone()))),
            }
        }
        self.last_hashed = stale.len();
        if stale.is_empty() {
            return Ok(self.current.clone());
        }
        let mut changes = Vec::new();
        for (path, sig, content) in hash_all(&stale)? {
            let digest = content.digest;
            for at in self.placed.get(&path).into_iter().flatten() {
                let name = at.file_name().map_or(&[][..], |n| n.as_bytes());
                changes.push((at.clone(), content.node(name, &sig)?));
            }
            let old = self
                .hashed
                .insert(path.clone(), (sig, content))
                .map(|(_, had)| had.digest);
            self.reblob(&path, old, sig, digest);
        }
        if stale
            .iter()
            .any(|(_, sig, _)| sig.size >= store::SAVE_AT_ONCE_FROM)
        {
            self.keep_hashes();
        } else {
            self.unsaved = true;
        }
        let manifest = current.with_replaced(changes)?;
        if manifest.root_digest() == current.root_digest() {
            return Ok(self.current.clone());
        }
        let manifest = Arc::new(manifest);
        self.current = Some(Arc::clone(&manifest));
        Ok(Some(manifest))
    }

    /// Keeps the blob table true after the file at `path` went from blob `old` to `new`:
    /// `old` is read from another file that still has it, or forgotten.
    fn reblob(&mut self, path: &Path, old: Option<Digest>, sig: FileSig, new: Digest) {
        if let Some(old) = old
            && old != new
            && self.blobs.get(&old).is_some_and(|(from, _)| from == path)
        {
            self.blobs.remove(&old);
            let other = self.hashed.iter().find(|(from, (_, content))| {
                content.digest == old && from.as_path() != path && self.placed.contains_key(*from)
            });
            if let Some((from, (sig, _))) = other {
                self.blobs.insert(old, (from.clone(), *sig));
            }
        }
        let entry = self.blobs.entry(new).or_insert((path.to_path_buf(), sig));
        // The file it was read from had it: now it has this signature.
        if entry.0 == path {
            entry.1 = sig;
        }
    }

    /// The file a blob of the current manifest is read from, opened without following a
    /// symlink, with its length; [`SourceBlob::unchanged`] after reading it vouches for
    /// the bytes read.
    ///
    /// # Errors
    /// [`Error::UnknownBlob`] when no file of the current manifest has `digest`;
    /// [`Error::SourceChanged`] when the file no longer has the signature it was hashed
    /// with (call [`manifest`](Scanner::manifest) again); [`Error::Io`] when it cannot be opened.
    pub fn open_blob(&self, digest: &Digest) -> Result<SourceBlob> {
        let Some((path, sig)) = self.blobs.get(digest) else {
            let root = self.roots.get(self.root).cloned().unwrap_or_default();
            return Err(Error::UnknownBlob {
                digest: *digest,
                root,
            });
        };
        let file = open_nofollow(path)?;
        let now = file.metadata().map_err(|e| Error::io("read", path, e))?;
        if FileSig::of(&now) != *sig {
            return Err(Error::SourceChanged { path: path.clone() });
        }
        Ok(SourceBlob::new(file, path, *sig))
    }
}

fn open_nofollow(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::SourceChanged {
                path: path.to_path_buf(),
            },
            _ => Error::io("open", path, e),
        })
}

/// Walks an entry of the wanted tree: whole when it matched, else only its wanted children.
fn walk_wanted(
    name: Vec<u8>,
    path: &Path,
    meta: &Metadata,
    wanted: &Wanted,
    watch: &mut Watch,
    depth: usize,
) -> Result<Walked> {
    if let Some((read_from, first)) = &wanted.whole {
        // Looked at again now that its folder is watched: a change between the expansion's
        // look and the watch sent no event.
        let meta = fs::symlink_metadata(read_from).map_err(|e| Error::io("read", read_from, e))?;
        if meta.file_type() != first.file_type() {
            return Err(Error::SourceChanged {
                path: read_from.clone(),
            });
        }
        return walk_whole(name, read_from, &meta, watch, depth);
    }
    if !meta.is_dir() {
        return Err(Error::ManifestInvalid {
            path: path.to_path_buf(),
            reason: "a folder on the way to a source is not a folder".into(),
        });
    }
    // Watched before its entries are looked at, so a change after the look sends an event.
    watch.add(path);
    let mut children = Vec::with_capacity(wanted.children.len());
    for (child, below) in &wanted.children {
        let child_path = path.join(OsStr::from_bytes(child));
        // A match is looked at in the call below; a folder on the way to one, here.
        let child_meta = match &below.whole {
            Some((_, m)) => m.clone(),
            None => fs::metadata(&child_path).map_err(|e| Error::io("read", &child_path, e))?,
        };
        children.push(walk_wanted(
            child.clone(),
            &child_path,
            &child_meta,
            below,
            watch,
            depth + 1,
        )?);
    }
    // Mirroring never copies a folder that is only on the way to a match (nor the root):
    // its mode and time would only make the digest change with every unrelated entry
    // added beside a match (a probe marker, say), so they are fixed.
    Ok(Walked::Dir {
        name,
        mode: WAY_MODE,
        mtime: Timestamp::default(),
        children,
    })
}

/// Walks a matched entry and everything beneath it, symlinks kept as symlinks; fifos,
/// sockets and devices inside a folder are skipped, as mirroring skips them.
fn walk_whole(
    name: Vec<u8>,
    path: &Path,
    meta: &Metadata,
    watch: &mut Watch,
    depth: usize,
) -> Result<Walked> {
    let kind = meta.file_type();
    let mtime = timestamp(meta.mtime(), meta.mtime_nsec());
    if kind.is_file() {
        // Another name outside the watched folders can change it without an event.
        if meta.nlink() > 1 {
            watch.spoil();
        }
        return Ok(Walked::File {
            name,
            path: path.to_path_buf(),
            sig: FileSig::of(meta),
        });
    }
    if kind.is_symlink() {
        let target = fs::read_link(path).map_err(|e| Error::io("read symlink", path, e))?;
        return Ok(Walked::Link {
            name,
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
            mtime,
            target: target.into_os_string().into_vec(),
        });
    }
    // Checked while walking: a tree too deep for a manifest must not exhaust the stack first.
    if depth >= crate::manifest::MAX_DEPTH {
        return Err(Error::ManifestInvalid {
            path: path.to_path_buf(),
            reason: format!("more than {} levels of folders", crate::manifest::MAX_DEPTH),
        });
    }
    watch.add(path);
    let mut children = Vec::new();
    let listing = fs::read_dir(path).map_err(|e| Error::io("list", path, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| Error::io("list", path, e))?;
        let child_path = entry.path();
        let child_meta = match fs::symlink_metadata(&child_path) {
            Ok(m) => m,
            // Removed between the listing and the look: as if it had not been listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", &child_path, e)),
        };
        let t = child_meta.file_type();
        if t.is_file() || t.is_dir() || t.is_symlink() {
            children.push(walk_whole(
                entry.file_name().into_vec(),
                &child_path,
                &child_meta,
                watch,
                depth + 1,
            )?);
        } else {
            // Said as mirroring from the shared folder says it.
            tracing::warn!(
                "skipping `{}`: neither a file, a folder nor a symlink",
                child_path.display()
            );
        }
    }
    Ok(Walked::Dir {
        name,
        mode: meta.mode() & 0o7777,
        mtime,
        children,
    })
}

fn collect_files<'a>(walked: &'a Walked, out: &mut Vec<(&'a PathBuf, &'a FileSig)>) {
    match walked {
        Walked::File { path, sig, .. } => out.push((path, sig)),
        Walked::Dir { children, .. } => children.iter().for_each(|c| collect_files(c, out)),
        Walked::Link { .. } => {}
    }
}

/// A file to hash: where it is read from, its signature, and what an earlier hashing of
/// it found, if any (whose prints spare hashing its unchanged pieces again).
type Stale = (PathBuf, FileSig, Option<Content>);

/// Hashes `files` on as many threads as there are cores; each result carries the signature
/// the file had while it was read.
fn hash_all(files: &[Stale]) -> Result<Vec<(PathBuf, FileSig, Content)>> {
    let lone = files.len() == 1;
    crate::par::each(files, |(path, sig, earlier)| {
        // Small files are the many: no buffer of a whole chunk for each.
        let mut buf = vec![0u8; CHUNK.min(sig.size as usize + 1)];
        let (sig, content) = hash_file(path, &mut buf, lone, earlier.as_ref())?;
        Ok((path.clone(), sig, content))
    })
}

/// Hashes one file through a descriptor opened without following a symlink (a file of
/// several pieces piece by piece, a large lone one on every core, the pieces whose print
/// is as `earlier` found it not hashed again); the signature is taken before and after,
/// and a file that changed meanwhile is read again.
fn hash_file(
    path: &Path,
    buf: &mut [u8],
    lone: bool,
    earlier: Option<&Content>,
) -> Result<(FileSig, Content)> {
    for _ in 0..TRIES {
        let file = open_nofollow(path)?;
        let before = FileSig::of(&file.metadata().map_err(|e| Error::io("read", path, e))?);
        let read = match piece_len(before.size) {
            None => read_whole(&file, path, before.size, buf)?,
            Some(len) => {
                let file = Pieced {
                    file: &file,
                    path,
                    size: before.size,
                    len,
                    earlier: earlier.and_then(|content| Earlier::of(content, len)),
                };
                if lone && before.size >= PARALLEL_HASH {
                    file.read_on_all_cores()?
                } else {
                    file.read(buf)?
                }
            }
        };
        let after = FileSig::of(&file.metadata().map_err(|e| Error::io("read", path, e))?);
        if let Some(content) = read
            && before == after
        {
            return Ok((after, content));
        }
    }
    Err(Error::SourceChanged {
        path: path.to_path_buf(),
    })
}

/// The content of a file of one piece of `size` bytes, or `None` when it was not that long
/// (it changed while read).
fn read_whole(mut file: &File, path: &Path, size: u64, buf: &mut [u8]) -> Result<Option<Content>> {
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    loop {
        let n = file.read(buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((read == size).then(|| Content {
        digest: hasher.finalize().into(),
        pieces: None,
        prints: Arc::from([]),
    }))
}

/// What an earlier hashing found of a file's pieces, when they were as long as they are
/// now (a file whose length moved to another piece length is hashed whole).
struct Earlier<'a> {
    size: u64,
    cvs: &'a [[u8; 32]],
    prints: &'a [u128],
}

impl<'a> Earlier<'a> {
    fn of(content: &'a Content, len: u64) -> Option<Earlier<'a>> {
        let pieces = content.pieces.as_ref()?;
        (piece_len(pieces.size()) == Some(len) && content.prints.len() == pieces.cvs().len()).then(
            || Earlier {
                size: pieces.size(),
                cvs: pieces.cvs(),
                prints: &content.prints,
            },
        )
    }

    /// The chaining value piece `index` had, if it had `print` and `bytes` bytes then.
    fn cv_if_same(&self, index: usize, len: u64, bytes: u64, print: u128) -> Option<[u8; 32]> {
        let start = index as u64 * len;
        let had_bytes = self.size.checked_sub(start)?.min(len);
        (had_bytes == bytes && *self.prints.get(index)? == print).then(|| self.cvs[index])
    }
}

/// A file of several pieces being hashed.
struct Pieced<'a> {
    file: &'a File,
    path: &'a Path,
    size: u64,
    len: u64,
    earlier: Option<Earlier<'a>>,
}

impl Pieced<'_> {
    /// The content, its pieces read in order on this thread; `None` when it was shorter
    /// than its size (it changed while read).
    fn read(&self, buf: &mut [u8]) -> Result<Option<Content>> {
        let count = piece_count(self.size);
        Ok(self
            .read_run(0..count, buf)?
            .and_then(|run| self.content(run)))
    }

    /// The content, its pieces split between the cores (each reads a run of them).
    fn read_on_all_cores(&self) -> Result<Option<Content>> {
        let count = piece_count(self.size);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = count.div_ceil(threads.max(1)).max(1);
        let runs: Vec<std::ops::Range<usize>> = (0..count)
            .step_by(per)
            .map(|first| first..(first + per).min(count))
            .collect();
        let read = crate::par::each(&runs, |run| {
            let mut buf = vec![0u8; CHUNK];
            self.read_run(run.clone(), &mut buf)
        })?;
        let mut whole = Run::default();
        for run in read {
            let Some(run) = run else {
                return Ok(None);
            };
            whole.cvs.extend(run.cvs);
            whole.prints.extend(run.prints);
        }
        Ok(self.content(whole))
    }

    /// The chaining values and prints of pieces `run`; `None` when the file ended early.
    fn read_run(&self, run: std::ops::Range<usize>, buf: &mut [u8]) -> Result<Option<Run>> {
        let mut read = Run::default();
        for index in run {
            let start = index as u64 * self.len;
            let bytes = self.len.min(self.size - start);
            let mut print = xxhash_rust::xxh3::Xxh3::new();
            // Without an earlier print to compare with, BLAKE3 hashes the piece in the
            // same pass.
            let mut hasher = self
                .earlier
                .is_none()
                .then(|| PieceHasher::new(self.len, index as u32));
            let whole = self.read_range(start, bytes, buf, |data| {
                print.update(data);
                if let Some(hasher) = &mut hasher {
                    hasher.update(data);
                }
            })?;
            if !whole {
                return Ok(None);
            }
            let print = print.digest128();
            let known = self
                .earlier
                .as_ref()
                .and_then(|earlier| earlier.cv_if_same(index, self.len, bytes, print));
            let cv = match (known, hasher) {
                (Some(cv), _) => cv,
                (None, Some(hasher)) => only_piece(hasher),
                (None, None) => {
                    // Changed since: read again for BLAKE3 (a file that changed between
                    // the two reads has another signature after, and is read again).
                    let mut hasher = PieceHasher::new(self.len, index as u32);
                    if !self.read_range(start, bytes, buf, |data| hasher.update(data))? {
                        return Ok(None);
                    }
                    only_piece(hasher)
                }
            };
            read.cvs.push(cv);
            read.prints.push(print);
        }
        Ok(Some(read))
    }

    /// Reads `bytes` bytes from `start` through `buf`, handing each read to `take`;
    /// `false` when the file ended before.
    fn read_range(
        &self,
        start: u64,
        bytes: u64,
        buf: &mut [u8],
        mut take: impl FnMut(&[u8]),
    ) -> Result<bool> {
        let (mut at, stop) = (start, start + bytes);
        while at < stop {
            let want = ((stop - at) as usize).min(buf.len());
            let n = self
                .file
                .read_at(&mut buf[..want], at)
                .map_err(|e| Error::io("read", self.path, e))?;
            if n == 0 {
                return Ok(false);
            }
            take(&buf[..n]);
            at += n as u64;
        }
        Ok(true)
    }

    /// The content the pieces read make; `None` when their number is not the file's (it
    /// cannot be: every piece was read whole).
    fn content(&self, read: Run) -> Option<Content> {
        let digest = crate::pieces::root_of(&read.cvs, self.len, self.size);
        let pieces = Pieces::new(self.size, digest, read.cvs)?;
        Some(Content {
            digest,
            pieces: Some(pieces),
            prints: Arc::from(read.prints),
        })
    }
}

/// What reading a run of pieces found: each piece's chaining value and print, in order.
#[derive(Default)]
struct Run {
    cvs: Vec<[u8; 32]>,
    prints: Vec<u128>,
}

/// The chaining value of the one piece `hasher` was fed.
fn only_piece(hasher: PieceHasher) -> [u8; 32] {
    hasher.finish().first().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_files_are_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            fs::write(dir.path().join(name), name).unwrap();
        }
        let mut scanner = Scanner::new(vec![dir.path().to_path_buf()], 0, vec![b"*".to_vec()]);
        let first = scanner.manifest().unwrap();
        assert_eq!(scanner.last_hashed, 3);
        let again = scanner.manifest().unwrap();
        assert_eq!(scanner.last_hashed, 0);
        assert!(Arc::ptr_eq(&first, &again));
        fs::write(dir.path().join("b"), "B").unwrap();
        let changed = scanner.manifest().unwrap();
        assert_eq!(scanner.last_hashed, 1);
        assert_ne!(changed.root_digest(), first.root_digest());
        // A second file with a content seen already is remembered on its own.
        fs::write(dir.path().join("a2"), "a").unwrap();
        scanner.manifest().unwrap();
        assert_eq!(scanner.last_hashed, 1);
        scanner.manifest().unwrap();
        assert_eq!(scanner.last_hashed, 0);
    }

    #[test]
    fn a_new_scanner_rehashes_only_what_changed_since_an_earlier_one_kept_its_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let keep = tempfile::tempdir().unwrap();
        let store = keep.path().join("hashes");
        let big: Vec<u8> = (0..(2 << 20) + 3).map(|i| (i % 241) as u8).collect();
        fs::write(dir.path().join("big"), &big).unwrap();
        fs::write(dir.path().join("mid"), vec![5u8; 100 << 10]).unwrap();
        fs::write(dir.path().join("small"), "small").unwrap();
        let run = || {
            let mut scanner = Scanner::new(vec![dir.path().to_path_buf()], 0, vec![b"*".to_vec()])
                .keep_hashes_in(store.clone());
            let manifest = scanner.manifest().unwrap();
            (manifest, scanner.last_hashed)
        };
        let (first, hashed) = run();
        assert_eq!(hashed, 3);
        // The next run hashes nothing again.
        let (second, hashed) = run();
        assert_eq!(hashed, 0);
        assert_eq!(second, first, "pieces included");
        // A file written since is hashed again, whatever its times say.
        let mtime = fs::metadata(dir.path().join("mid"))
            .unwrap()
            .modified()
            .unwrap();
        fs::write(dir.path().join("mid"), vec![6u8; 100 << 10]).unwrap();
        fs::File::options()
            .write(true)
            .open(dir.path().join("mid"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let (third, hashed) = run();
        assert_eq!(hashed, 1);
        assert_ne!(third.root_digest(), first.root_digest());
        // A damaged store is ignored: everything is hashed, the manifest is right.
        fs::write(&store, b"not a store").unwrap();
        let (fourth, hashed) = run();
        assert_eq!(hashed, 3);
        assert_eq!(fourth, third);
    }

    /// A scanner of folder `d` beneath `dir` whose every scan runs `moves` between its
    /// walk and its hashing.
    fn moved_while_scanned(dir: &Path, moves: impl FnMut() + Send + 'static) -> Scanner {
        let mut scanner = Scanner::new(vec![dir.to_path_buf()], 0, vec![b"d".to_vec()]);
        scanner.after_walk = Some(Box::new(moves));
        scanner
    }

    #[test]
    fn an_editors_temporary_file_renamed_away_while_it_was_scanned_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/model.lib"), "old").unwrap();
        fs::write(dir.path().join("d/.model.lib.tmp"), "new").unwrap();
        let (tmp, saved) = (
            dir.path().join("d/.model.lib.tmp"),
            dir.path().join("d/model.lib"),
        );
        let mut saves = 0;
        let mut scanner = moved_while_scanned(dir.path(), move || {
            // The editor saves once, during the first scan: listed, then gone.
            if saves == 0 {
                fs::rename(&tmp, &saved).unwrap();
            }
            saves += 1;
        });
        let manifest = scanner.manifest().unwrap();
        let names: Vec<PathBuf> = manifest.entries().into_iter().map(|(p, _)| p).collect();
        assert!(names.contains(&PathBuf::from("d/model.lib")), "{names:?}");
        assert!(
            !names.contains(&PathBuf::from("d/.model.lib.tmp")),
            "{names:?}"
        );
        assert_eq!(fs::read(dir.path().join("d/model.lib")).unwrap(), b"new");
        assert!(matches!(
            manifest.find(Path::new("d/model.lib")).map(Node::kind),
            Some(crate::manifest::NodeKind::File { digest, .. }) if *digest == Digest::of(b"new")
        ));
    }

    #[test]
    fn sources_that_never_settle_fail_after_a_few_scans_and_a_source_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let scans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (counted, d) = (Arc::clone(&scans), dir.path().join("d"));
        let mut scanner = moved_while_scanned(dir.path(), move || {
            // Every scan lists a file that is gone when it is read.
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = fs::remove_file(d.join(format!("tmp{n}")));
            fs::write(d.join(format!("tmp{}", n + 1)), "x").unwrap();
        });
        fs::write(dir.path().join("d/tmp0"), "x").unwrap();
        let error = scanner.manifest().unwrap_err();
        assert!(error.moved_while_scanned(), "{error}");
        assert!(error.to_string().contains("tmp"), "names the file: {error}");
        assert_eq!(
            scans.load(std::sync::atomic::Ordering::SeqCst),
            1 + RESCAN_AFTER.len()
        );

        // A dangling symlink is refused by mirroring's rules: no scan again.
        let refused = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(refused.path().join("gone"), refused.path().join("d")).unwrap();
        let scans = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&scans);
        let mut scanner = moved_while_scanned(refused.path(), move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let error = scanner.manifest().unwrap_err();
        assert!(!error.moved_while_scanned(), "{error}");
        assert!(scans.load(std::sync::atomic::Ordering::SeqCst) <= 1);
    }
}

#[cfg(test)]
mod print_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::pieces::tests::content as data;

    fn hashed(path: &Path, lone: bool, earlier: Option<&Content>) -> Content {
        let mut buf = vec![0u8; CHUNK];
        hash_file(path, &mut buf, lone, earlier).unwrap().1
    }

    #[test]
    fn an_unchanged_piece_keeps_its_earlier_value_and_a_changed_one_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib");
        let mut bytes = data((3 << 20) + 5, 1);
        fs::write(&path, &bytes).unwrap();
        let first = hashed(&path, false, None);
        assert_eq!(first.prints.len(), 4);
        // An earlier hashing whose first piece's value is not that piece's: kept as it
        // is while the piece's print is unchanged, which shows it was not hashed again.
        let mut cvs = first.pieces.as_ref().unwrap().cvs().to_vec();
        cvs[0] = [7; 32];
        let size = bytes.len() as u64;
        let digest = crate::pieces::root_of(&cvs, piece_len(size).unwrap(), size);
        let forged = Content {
            digest,
            pieces: Pieces::new(size, digest, cvs),
            prints: first.prints.clone(),
        };
        bytes[(2 << 20) + 9] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let again = hashed(&path, false, Some(&forged));
        let again_cvs = again.pieces.as_ref().unwrap().cvs();
        assert_eq!(again_cvs[0], [7; 32]);
        assert_eq!(again.prints[..2], first.prints[..2]);
        assert_ne!(again.prints[2], first.prints[2]);
        // The changed piece has the value a hashing from scratch gives it.
        let fresh = hashed(&path, false, None);
        assert_eq!(again_cvs[1..], fresh.pieces.as_ref().unwrap().cvs()[1..]);
        assert_eq!(fresh.digest, Digest::from(blake3::hash(&bytes)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever changed (bytes anywhere, a longer or shorter file), hashing with the
        /// earlier prints gives what hashing from scratch gives: the file's BLAKE3.
        #[test]
        fn hashing_again_with_prints_is_hashing_from_scratch(
            size in (1usize << 20) + 1..(5 << 20),
            edits in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..4),
            resize in proptest::option::of(-(1i64 << 20)..(3 << 20)),
            lone in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("model.lib");
            let mut bytes = data(size, 3);
            fs::write(&path, &bytes).unwrap();
            let first = hashed(&path, lone, None);
            for (at, value) in edits {
                let last = bytes.len() - 1;
                let at = ((bytes.len() as f64 * at) as usize).min(last);
                bytes[at] ^= value | 1;
            }
            if let Some(by) = resize {
                let len = (bytes.len() as i64 + by).max(1) as usize;
                bytes.resize(len, 0x5a);
            }
            fs::write(&path, &bytes).unwrap();
            let again = hashed(&path, lone, Some(&first));
            prop_assert_eq!(again.digest, Digest::from(blake3::hash(&bytes)));
            let fresh = hashed(&path, lone, None);
            prop_assert_eq!(again.pieces, fresh.pieces);
            prop_assert_eq!(&again.prints[..], &fresh.prints[..]);
        }
    }
}

#[cfg(test)]
mod watch_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A folder on a file system the watch trusts, or `None` (the test then says so).
    fn watchable_dir() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().ok()?;
        if parvm_mirror_fs::watchable_source(dir.path()) {
            return Some(dir);
        }
        tempfile::tempdir_in("/dev/shm")
            .ok()
            .filter(|d| parvm_mirror_fs::watchable_source(d.path()))
    }

    #[test]
    fn a_quiet_watch_skips_the_scan_and_any_change_ends_it() {
        let Some(dir) = watchable_dir() else {
            eprintln!("SKIPPED a_quiet_watch_skips_the_scan: no folder on a watchable file system");
            return;
        };
        let root = dir.path();
        fs::create_dir_all(root.join("lib/deep")).unwrap();
        fs::write(root.join("lib/a.x"), "a").unwrap();
        fs::write(root.join("lib/deep/d"), "d").unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("top"), "t").unwrap();
        let sources = ["lib", "empty/*.x", "top"]
            .map(|s| s.as_bytes().to_vec())
            .to_vec();
        let mut scanner = Scanner::new(vec![root.to_path_buf()], 0, sources);
        // Long enough that the interval cannot end the watch during the test.
        scanner.trust_for = Duration::from_secs(3600).min(parvm_mirror_fs::FULL_SCAN_EVERY);
        let first = scanner.manifest().unwrap();
        assert!(scanner.last_scanned);

        type Change = fn(&Path);
        // Whether the scanner may update its manifest from the events alone, or must scan.
        let changes: [(&str, bool, Change); 5] = [
            ("a file deep in a matched folder", true, |r| {
                fs::write(r.join("lib/deep/d"), "D").unwrap()
            }),
            ("a new file a glob matches", false, |r| {
                fs::write(r.join("empty/new.x"), "n").unwrap()
            }),
            ("a top-level file's mode", true, |r| {
                fs::set_permissions(r.join("top"), fs::Permissions::from_mode(0o600)).unwrap()
            }),
            ("a folder's mode", false, |r| {
                fs::set_permissions(r.join("lib/deep"), fs::Permissions::from_mode(0o700)).unwrap()
            }),
            ("a file removed", false, |r| {
                fs::remove_file(r.join("lib/a.x")).unwrap()
            }),
        ];
        let mut last = first;
        for (what, updated, change) in changes {
            let same = scanner.manifest().unwrap();
            assert!(
                !scanner.last_scanned && !scanner.last_updated,
                "{what}: nothing changed yet"
            );
            assert!(Arc::ptr_eq(&same, &last));
            change(root);
            let next = scanner.manifest().unwrap();
            assert_eq!(
                (scanner.last_updated, scanner.last_scanned),
                (updated, !updated),
                "{what}"
            );
            assert_ne!(next.root_digest(), last.root_digest(), "{what}");
            // Updated or scanned, the manifest is what a new scanner makes of the tree.
            let mut fresh = Scanner::new(scanner.roots.clone(), 0, scanner.sources.clone());
            assert_eq!(*next, *fresh.manifest().unwrap(), "{what}");
            last = next;
        }
    }

    #[test]
    fn a_small_file_changed_within_a_run_is_kept_for_the_next_when_the_scanner_goes() {
        let Some(dir) = watchable_dir() else {
            eprintln!("SKIPPED a_small_file_changed_within_a_run: no watchable file system");
            return;
        };
        let keep = tempfile::tempdir().unwrap();
        let store = keep.path().join("hashes");
        let root = dir.path();
        fs::write(root.join("small"), "small").unwrap();
        fs::write(root.join("other"), "other").unwrap();
        let scanner = || {
            let mut scanner = Scanner::new(vec![root.to_path_buf()], 0, vec![b"*".to_vec()])
                .keep_hashes_in(store.clone());
            scanner.trust_for = Duration::from_secs(3600).min(parvm_mirror_fs::FULL_SCAN_EVERY);
            scanner
        };
        let mut first = scanner();
        first.manifest().unwrap();
        fs::write(root.join("small"), "small, edited").unwrap();
        let edited = first.manifest().unwrap();
        assert!(first.last_updated && first.last_hashed == 1);
        assert!(first.unsaved, "not written for a small file at once");
        drop(first);
        let mut next = scanner();
        assert_eq!(next.manifest().unwrap(), edited);
        assert_eq!(next.last_hashed, 0, "written when the scanner went");
    }

    #[test]
    fn changed_contents_update_the_manifest_as_a_scan_would() {
        let Some(dir) = watchable_dir() else {
            eprintln!("SKIPPED changed_contents_update_the_manifest: no watchable file system");
            return;
        };
        let root = dir.path();
        fs::create_dir_all(root.join("m/sub")).unwrap();
        for (name, content) in [
            ("m/a", "same"),
            ("m/sub/b", "same"),
            ("m/c", "c"),
            ("m/x.skip", "x"),
        ] {
            fs::write(root.join(name), content).unwrap();
        }
        fs::write(root.join("other"), "not matched").unwrap();
        // `m/a` twice: through the folder and on its own.
        let sources = ["m/a", "m/sub", "m/c"]
            .map(|s| s.as_bytes().to_vec())
            .to_vec();
        let mut scanner = Scanner::new(vec![root.to_path_buf()], 0, sources.clone());
        scanner.trust_for = Duration::from_secs(3600).min(parvm_mirror_fs::FULL_SCAN_EVERY);
        let first = scanner.manifest().unwrap();
        let same = Digest::of(b"same");
        assert_eq!(scanner.blobs.len(), 2);

        // Files beside the matches change: nothing to look at, the same manifest.
        fs::write(root.join("other"), "still not matched").unwrap();
        fs::write(root.join("m/x.skip"), "y").unwrap();
        let again = scanner.manifest().unwrap();
        assert!(scanner.last_updated && !scanner.last_scanned);
        assert_eq!(scanner.last_hashed, 0);
        assert!(Arc::ptr_eq(&first, &again));

        // One of two files with one content changes, and another file twice.
        fs::write(root.join("m/a"), "new a").unwrap();
        fs::write(root.join("m/c"), "c1").unwrap();
        fs::write(root.join("m/c"), "c2").unwrap();
        let updated = scanner.manifest().unwrap();
        assert!(scanner.last_updated && !scanner.last_scanned);
        assert_eq!(scanner.last_hashed, 2);
        let mut fresh = Scanner::new(vec![root.to_path_buf()], 0, sources);
        assert_eq!(*updated, *fresh.manifest().unwrap());
        // Every blob of the manifest is served, and only those: the shared content from
        // the file that still has it.
        for (digest, size, _) in updated.blobs() {
            assert_eq!(scanner.open_blob(&digest).unwrap().size, size);
        }
        assert_eq!(scanner.blobs.len(), updated.blobs().len());
        assert!(scanner.open_blob(&same).is_ok());
        assert!(scanner.open_blob(&Digest::of(b"c1")).is_err());
        assert!(scanner.open_blob(&Digest::of(b"c")).is_err());
    }

    #[test]
    fn hard_links_and_an_ended_interval_mean_a_scan_every_time() {
        let Some(dir) = watchable_dir() else {
            eprintln!(
                "SKIPPED hard_links_and_an_ended_interval: no folder on a watchable file system"
            );
            return;
        };
        let root = dir.path();
        fs::write(root.join("f"), "f").unwrap();
        let mut plain = Scanner::new(vec![root.to_path_buf()], 0, vec![b"f".to_vec()]);
        plain.trust_for = Duration::ZERO;
        plain.manifest().unwrap();
        plain.manifest().unwrap();
        assert!(plain.last_scanned, "the interval ended at once");

        fs::hard_link(root.join("f"), root.join("g")).unwrap();
        let mut linked = Scanner::new(vec![root.to_path_buf()], 0, vec![b"f".to_vec()]);
        linked.manifest().unwrap();
        linked.manifest().unwrap();
        assert!(
            linked.last_scanned,
            "a hard-linked file can change through its other name"
        );
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    #[test]
    fn a_tree_deeper_than_a_manifest_allows_is_refused_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().join("top");
        for _ in 0..crate::manifest::MAX_DEPTH + 2 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let mut scanner = Scanner::new(vec![dir.path().to_path_buf()], 0, vec![b"top".to_vec()]);
        match scanner.manifest() {
            Err(e @ Error::ManifestInvalid { .. }) => {
                assert!(e.to_string().contains("levels"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
