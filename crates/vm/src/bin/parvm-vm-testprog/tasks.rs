//! The tasks of the test program; the integration tests include this file too, so the
//! spawner (the test) and the workers (this program) share one registry.

use std::convert::Infallible;
use std::time::Duration;

use parvm_vm::{TaskContext, TaskId, Tasks};

/// Every test task, by name.
pub fn tasks() -> Tasks {
    Tasks::new()
        .register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
        .register(
            "hold_memory",
            |_: &TaskContext, (mib, fill): (usize, u8)| {
                // Keeps `mib` MiB filled with `fill` in the worker until the next call, which
                // writes every byte again.
                static HELD: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
                let mut held = HELD
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                held.resize(mib << 20, 0);
                held.fill(fill);
                Ok::<_, Infallible>(held.iter().map(|&b| usize::from(b)).sum::<usize>())
            },
        )
        .register("echo", |_: &TaskContext, text: String| {
            Ok::<_, Infallible>(text)
        })
        .register("add", |_: &TaskContext, (a, b): (i64, i64)| {
            Ok::<_, Infallible>(a + b)
        })
        .register(
            "panic",
            |_: &TaskContext, text: String| -> Result<(), Infallible> { panic!("{text}") },
        )
        .register("fail", |_: &TaskContext, text: String| Err::<(), _>(text))
        .register(
            "exit",
            |_: &TaskContext, code: i32| -> Result<(), Infallible> { std::process::exit(code) },
        )
        .register("pid", |_: &TaskContext, (): ()| {
            Ok::<_, Infallible>(std::process::id())
        })
        .register("sleep", |_: &TaskContext, ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok::<_, Infallible>(())
        })
        .register("sleep_pid", |_: &TaskContext, ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok::<_, Infallible>(std::process::id())
        })
        .register("fail_once", |_: &TaskContext, marker: String| {
            // Fails the first time (leaving `marker`), succeeds from then on.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
            {
                Ok(_) => Err(format!("failing once (marker `{marker}` made)")),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(marker),
                Err(e) => Err(format!("cannot make marker `{marker}`: {e}")),
            }
        })
        .register("bounce", bounce)
        .register(
            "send_many",
            |ctx: &TaskContext, (count, size, progress): (u64, usize, String)| {
                send_numbered(ctx, TaskId::SPAWNER, count, size, &progress)
            },
        )
        .register(
            "send_many_to",
            |ctx: &TaskContext, (to, count, size, progress): (TaskId, u64, usize, String)| {
                send_numbered(ctx, to, count, size, &progress)
            },
        )
        .register(
            "recv_many_after",
            |ctx: &TaskContext, (gate, count, size): (String, u64, usize)| {
                // Receives nothing until the file `gate` exists; then `count` messages of
                // `size` bytes, numbered from 0 as `send_numbered` sends them.
                while !std::path::Path::new(&gate).exists() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                for seq in 0..count {
                    let (_, data) = ctx.recv().map_err(|e| e.to_string())?;
                    let data = data.bytes();
                    if data.len() != size.max(8) || data[..8] != seq.to_le_bytes() {
                        return Err(format!(
                            "message {seq}: {} bytes numbered {:?}",
                            data.len(),
                            data.get(..8)
                        ));
                    }
                }
                Ok::<_, String>(count)
            },
        )
        .register("recv_one", |ctx: &TaskContext, (): ()| {
            let (_, data) = ctx.recv().map_err(|e| e.to_string())?;
            data.decode::<String>().map_err(|e| e.to_string())
        })
        .register("relay", |ctx: &TaskContext, to: TaskId| {
            ctx.send(to, &format!("hi from {}", ctx.task_id()))
                .map_err(|e| e.to_string())
        })
        .register("list", |ctx: &TaskContext, (): ()| {
            let dir = ctx.dir().map_or_else(|| ".".into(), ToOwned::to_owned);
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with(".parvm"))
                .collect();
            names.sort();
            Ok::<_, String>(names)
        })
        .register("read_then", read_then)
        .register("tree", |ctx: &TaskContext, (): ()| {
            let dir = ctx.dir().ok_or("this task has no folder")?;
            tree(dir, std::path::Path::new("")).map_err(|e| e.to_string())
        })
        .register("getenv", |_: &TaskContext, name: String| {
            Ok::<_, Infallible>(std::env::var(name).ok())
        })
        .register("cwd", |_: &TaskContext, (): ()| {
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .map_err(|e| e.to_string())
        })
        .register("describe", |ctx: &TaskContext, (): ()| {
            let dir = ctx.dir().ok_or("this task has no folder")?;
            describe(dir).map_err(|e| format!("cannot describe `{}`: {e}", dir.display()))
        })
        .register("dir", |ctx: &TaskContext, (): ()| {
            Ok::<_, Infallible>(ctx.dir().map(|d| d.display().to_string()))
        })
        .register("flood", |_: &TaskContext, lines: u64| {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for seq in 0..lines {
                out.write_all(&flood_line(seq))
                    .map_err(|e| format!("cannot write line {seq}: {e}"))?;
            }
            out.flush().map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        })
        .register("print", |_: &TaskContext, text: String| {
            println!("{text}");
            eprintln!("err: {text}");
            Ok::<_, Infallible>(())
        })
        .register(
            "write",
            |ctx: &TaskContext, (name, fail): (String, bool)| {
                let dir = ctx.dir().ok_or("the task has no folder")?;
                let before: Vec<String> = std::fs::read_dir(dir)
                    .map_err(|e| e.to_string())?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".parvm"))
                    .collect();
                std::fs::write(dir.join(&name), "written").map_err(|e| e.to_string())?;
                if fail {
                    panic!("failing after writing {name}");
                }
                Ok::<_, String>(before)
            },
        )
        .register("write_files", write_files)
        .register(
            "plant_symlink",
            |ctx: &TaskContext, (link, target): (String, String)| {
                let dir = ctx.dir().ok_or("this task has no folder")?;
                let link = dir.join(link);
                if let Some(parent) = link.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::os::unix::fs::symlink(target, link).map_err(|e| e.to_string())
            },
        )
        .register("changing", |ctx: &TaskContext, files: Vec<ReturnFile>| {
            // Files named `changing-once*` grow by a byte after their first read, files
            // named `changing-always*` after every read (see `grow_while_returned`).
            parvm_vm::set_return_hook(Some(grow_while_returned));
            write_files(ctx, files)
        })
}

/// A file for the `write_files` task: path in the task folder, size, mode, mtime (seconds).
pub type ReturnFile = (String, u64, u32, i64);

/// The content of returned test file `path` of `size` bytes.
pub fn file_content(path: &str, size: u64) -> Vec<u8> {
    let seed = path
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    (0..size)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

/// Writes `files` (with `file_content`) into the task folder, with their modes and times.
fn write_files(ctx: &TaskContext, files: Vec<ReturnFile>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = ctx.dir().ok_or("this task has no folder")?;
    for (path, size, mode, mtime) in files {
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&full, file_content(&path, size)).map_err(|e| e.to_string())?;
        let file = std::fs::File::options()
            .write(true)
            .open(&full)
            .map_err(|e| e.to_string())?;
        file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime as u64))
            .map_err(|e| e.to_string())?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The return hook of the `changing` task: appends a byte to the file just read when its
/// name says so (`changing-once*` only while its size is even, so it changes once); ends
/// the worker process at `die-after-read*` (never use that name with in-process workers).
fn grow_while_returned(path: &std::path::Path) {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("die-after-read") {
        // The worker dies with the file sent but not complete (worker processes only).
        std::process::exit(3);
    }
    let grow = if name.starts_with("changing-always") {
        true
    } else if name.starts_with("changing-once") {
        std::fs::metadata(path).is_ok_and(|m| m.len() % 2 == 0)
    } else {
        false
    };
    if grow && let Ok(mut file) = std::fs::File::options().append(true).open(path) {
        let _ = file.write_all(b"+");
    }
}

/// Bytes in a line of the `flood` task, newline included.
pub const FLOOD_LINE: usize = 1000;

/// Line `seq` of the `flood` task: the number, then a letter that depends on it.
pub fn flood_line(seq: u64) -> Vec<u8> {
    let mut line = format!("{seq:010} ").into_bytes();
    line.resize(FLOOD_LINE - 1, b'a' + (seq % 26) as u8);
    line.push(b'\n');
    line
}

/// Sends every message back to its sender until an empty one arrives; returns the count.
/// Reads a file in the task folder, then `edit`s it in place (same size), `delete`s it, or
/// leaves it (`keep`): the next task on a persistent folder must see the source again.
fn read_then(ctx: &TaskContext, (name, action): (String, String)) -> Result<String, String> {
    let dir = ctx.dir().ok_or("this task has no folder")?;
    let path = dir.join(&name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read `{name}`: {e}"))?;
    match action.as_str() {
        "edit" => std::fs::write(&path, "x".repeat(text.len())).map_err(|e| e.to_string())?,
        "delete" => std::fs::remove_file(&path).map_err(|e| e.to_string())?,
        _ => {}
    }
    Ok(text)
}

fn bounce(ctx: &TaskContext, (): ()) -> Result<u64, String> {
    let mut count = 0;
    loop {
        let (from, data) = ctx.recv().map_err(|e| e.to_string())?;
        if data.bytes().is_empty() {
            return Ok(count);
        }
        ctx.send_bytes(from, data.bytes())
            .map_err(|e| e.to_string())?;
        count += 1;
    }
}

/// One entry of a folder as [`describe`] gives it.
pub type Described = (String, String, u32, i64, Vec<u8>);

/// Every entry beneath `dir` (local storage's own `.parvm` files left out), sorted: its
/// relative path, its kind, its permission bits, its modification time in seconds (0 for
/// a folder, whose time a later write in it changes) and what it holds (a file's bytes, a
/// symlink's target). Two folders with the same description hold the same tree.
fn describe(dir: &std::path::Path) -> std::io::Result<Vec<Described>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for name in tree(dir, std::path::Path::new(""))? {
        let path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        let (kind, mtime, content) = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            ("symlink", 0, target.as_os_str().as_bytes().to_vec())
        } else if meta.is_dir() {
            ("folder", 0, Vec::new())
        } else {
            ("file", meta.mtime(), std::fs::read(&path)?)
        };
        let mode = if kind == "symlink" {
            0
        } else {
            meta.mode() & 0o7777
        };
        out.push((name, kind.to_owned(), mode, mtime, content));
    }
    Ok(out)
}

/// Every path beneath `dir` (relative, sorted; symlinks not followed), local storage's own
/// `.parvm` files left out.
fn tree(dir: &std::path::Path, relative: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.join(relative))? {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        if path.to_string_lossy().starts_with(".parvm") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            names.extend(tree(dir, &path)?);
        }
        names.push(path.display().to_string());
    }
    names.sort();
    Ok(names)
}

/// Sends `count` messages of `size` bytes (at least 8) to `to`, each starting with its
/// number; after each, how many went, in the file `progress`.
fn send_numbered(
    ctx: &TaskContext,
    to: TaskId,
    count: u64,
    size: usize,
    progress: &str,
) -> Result<u64, String> {
    for seq in 0..count {
        let mut data = vec![b'm'; size.max(8)];
        data[..8].copy_from_slice(&seq.to_le_bytes());
        ctx.send_bytes(to, &data).map_err(|e| e.to_string())?;
        std::fs::write(progress, (seq + 1).to_string())
            .map_err(|e| format!("cannot write `{progress}`: {e}"))?;
    }
    Ok(count)
}
