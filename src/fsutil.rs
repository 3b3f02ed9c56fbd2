//! Atomic file output: everything vggft writes goes to a temporary file in
//! the destination folder and is renamed into place, so a crash or a full
//! disk never leaves a half-written file under the real name.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Longest file name most filesystems take (ext4, XFS, btrfs, APFS: 255 bytes).
const NAME_MAX: usize = 255;

/// `name` cut at a character boundary to at most `max` bytes, keeping its
/// extension (the part from the last `.`, where that is short).
fn cut_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let ext = name.rfind('.').map(|i| &name[i..]).filter(|e| e.len() <= 16).unwrap_or("");
    let mut keep = max.saturating_sub(ext.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{ext}", &name[..keep])
}

/// A temporary sibling of `path` (same folder, so the rename is atomic).
/// Its name ends in the same extension, for writers that choose a format by
/// it, and stays within `NAME_MAX` wherever `path`'s own name does.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{}.tmp.", std::process::id());
    path.with_file_name(format!("{prefix}{}", cut_name(&name, NAME_MAX - prefix.len())))
}

/// The temporary files this process is writing now (`write_atomic_with`)
/// and its staging folders (`write_together`), for `stop_writing`.
static WRITING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The registry of files being written, whatever a panicking writer left it as.
fn writing() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    WRITING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The folders `write_set` made in this call (`missing_folders`, deepest
/// first) while it writes a set into them: a stop removes them again, with
/// their `.lock`, where nothing else is in them.
static MADE: std::sync::Mutex<Vec<Vec<PathBuf>>> = std::sync::Mutex::new(Vec::new());

/// The registry of folders being made, whatever a panicking writer left it as.
fn made_folders() -> std::sync::MutexGuard<'static, Vec<Vec<PathBuf>>> {
    MADE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the temporary files this process is writing and returns a guard
/// that holds every other write of this process at its next start or
/// finish until dropped: a signal's handler keeps it while the process
/// ends, so that no write completes, or fails aloud, after the removal, and
/// a stopped command leaves its finished files and nothing half-written
/// (not even a hidden temporary one).
pub fn stop_writing() -> Stopped {
    stop_writing_where(|_| true)
}

/// `stop_writing`'s hold on every write of this process.
pub struct Stopped(std::sync::MutexGuard<'static, Vec<PathBuf>>);

impl Stopped {
    /// Removes the temporary files again, just before the process ends: a
    /// writer registers its file before it creates it, so one it created
    /// after the first removal (the signal came between the two) goes too.
    pub fn remove_again(&self) {
        self.0.iter().for_each(|t| remove_temp(t));
    }
}

/// `stop_writing` for the temporary files `which` accepts (a test's own
/// folder: the tests of one binary write side by side).
fn stop_writing_where(which: impl Fn(&Path) -> bool) -> Stopped {
    let guard = writing();
    for tmp in guard.iter().filter(|t| which(t)) {
        remove_temp(tmp);
    }
    // Then the folders a set was being written into, where this call made them.
    for folders in made_folders().iter().filter(|f| f.first().is_some_and(|d| which(d))) {
        let _ = std::fs::remove_file(folders[0].join(".lock"));
        remove_empty(folders);
    }
    Stopped(guard)
}

/// Removes a temporary file, or a staging folder (`write_together`) whole.
fn remove_temp(tmp: &Path) {
    if tmp.is_dir() {
        let _ = std::fs::remove_dir_all(tmp);
    } else {
        let _ = std::fs::remove_file(tmp);
    }
}

/// Writes a set of files that belong together (an evaluation's metrics.json,
/// plots and top-loss tiles) into `dir`, replacing the set an earlier run of
/// the same command left there. `write` writes them into a hidden staging
/// folder inside `dir`; only when it has written all of them is `clear`
/// given `dir` and what `write` returned (to remove the earlier set's files
/// that this one has not) and each new file moved into place. A failure
/// part-way — a full disk, a stop — leaves `dir` as it was: no new
/// metrics.json beside an earlier plot, no staging folder. Errors name the
/// files under `dir`, where they were going.
pub(crate) fn write_together<T>(dir: &Path, clear: impl FnOnce(&Path, &T), write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let stage = dir.join(format!(".{}.tmp.staged", std::process::id()));
    remove_temp(&stage);
    {
        // Made and registered under the registry's lock: a stop between the
        // two would leave a staging folder it did not know of.
        let mut w = writing();
        create_dir(&stage)?;
        w.push(stage.clone());
    }
    let result = write(&stage).and_then(|value| {
        clear(dir, &value);
        move_into(&stage, dir)?;
        Ok(value)
    });
    remove_temp(&stage);
    let mut w = writing();
    if let Some(i) = w.iter().position(|t| *t == stage) {
        w.swap_remove(i);
    }
    result.map_err(|e| {
        let place = |p: PathBuf| p.strip_prefix(&stage).map(|rest| dir.join(rest)).unwrap_or(p);
        match e {
            Error::File { path, problem } => Error::File { path: place(path), problem },
            Error::Io { path, reason } => Error::Io { path: place(path), reason },
            e => e,
        }
    })
}

/// `write_together` into a command's own output folder (an evaluation's, a
/// sweep's): made where missing, locked against a second writer, a killed
/// writer's leftovers removed; where the writing fails, a folder this call
/// made is removed again, so that nothing of it is left.
pub(crate) fn write_set<T>(dir: &Path, clear: impl FnOnce(&Path, &T), write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let made = missing_folders(dir);
    let _lock = {
        // Made and registered under the registry's lock, as a staging folder is.
        let mut m = made_folders();
        let lock = create_locked(dir, ".lock", false)?;
        if !made.is_empty() {
            m.push(made.clone());
        }
        lock
    };
    remove_stale_temps(dir);
    let result = write_together(dir, clear, write).inspect_err(|_| {
        if !made.is_empty() {
            let _ = std::fs::remove_file(dir.join(".lock"));
            remove_empty(&made);
        }
    });
    let mut m = made_folders();
    if let Some(i) = m.iter().position(|f| *f == made) {
        m.swap_remove(i);
    }
    result
}

/// Moves every entry of `from` into `to` (files replacing theirs; folders
/// merged, so that files of the user's own in one stay).
fn move_into(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))?.flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) && dest.is_dir() {
            move_into(&e.path(), &dest)?;
        } else {
            std::fs::rename(e.path(), &dest).map_err(|err| Error::file(&dest, format!("cannot move the finished file into place: {err}")))?;
        }
    }
    Ok(())
}

/// Runs `write` on a temporary path, syncs it and renames it onto `path`.
pub(crate) fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if path.is_dir() {
        return Err(Error::file(path, "is a folder: give the name of a file to write"));
    }
    let tmp = temp_sibling(path);
    writing().push(tmp.clone());
    let result = write(&tmp).and_then(|_| {
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::file(path, format!("cannot move the finished file into place: {e}")))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let mut w = writing();
    if let Some(i) = w.iter().position(|t| *t == tmp) {
        w.swap_remove(i);
    }
    result
}

/// Writes bytes atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::file(path, format!("cannot create: {e}")))?;
        f.write_all(bytes).map_err(|e| Error::file(path, format!("cannot write: {e}")))
    })
}

/// Serialises a value as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| Error::file(path, format!("cannot serialise: {e}")))?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// The name of an output file vggft derives from an input's (a heatmap, a
/// face crop, an evaluate folder): the input's file stem, control characters
/// (a line break or tab in the name) as `_`, so listings of the outputs stay
/// one line per file; cut to 200 bytes, so that a prefix and an extension
/// added to the longest name a filesystem takes still make a name it takes.
pub fn output_stem(input: &Path) -> String {
    let stem: String = input.file_stem().map(|s| s.to_string_lossy().chars().map(|c| if c.is_control() { '_' } else { c }).collect()).unwrap_or_default();
    cut_name(&stem, 200)
}

/// Whether `path` is there, where a folder above it that this user cannot
/// enter is an error naming the path (`Path::exists` says false, which
/// read as "not found" of a run folder shared without read rights). A file
/// where a folder above it should be is "not there", as before.
pub(crate) fn exists(path: &Path) -> Result<bool> {
    match path.try_exists() {
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
        found => found.map_err(|e| Error::io(path, e)),
    }
}

/// Creates a folder and its parents, naming it in the error.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| {
        // A file where the folder (or one above it) must go: say so, not errno's "File exists".
        match path.ancestors().find(|a| a.exists() && !a.is_dir()) {
            Some(file) if file == path => Error::file(path, "cannot create folder: a file of that name is in the way"),
            Some(file) => Error::file(path, format!("cannot create folder: {} is a file, not a folder", file.display())),
            // A relative path says where it is: the folder it would go in (`own/fc/crops` in `own/fc`),
            // or the working folder (a `runs` in a folder this user cannot write).
            None if path.is_relative() => match path.ancestors().skip(1).find(|a| !a.as_os_str().is_empty() && a.is_dir()) {
                Some(within) => Error::file(path, format!("cannot create folder in {}: {e}", within.display())),
                None => match std::env::current_dir() {
                    Ok(here) => Error::file(path, format!("cannot create folder in {}: {e}", here.display())),
                    Err(_) => Error::file(path, format!("cannot create folder: {e}")),
                },
            },
            None => Error::file(path, format!("cannot create folder: {e}")),
        }
    })
}

/// Checks, before a long computation, that output folder `path` can be
/// made — made, and removed again where it was not there — so that one that
/// cannot (a model folder shared read-only, another user's working folder)
/// fails at once rather than after minutes of work, and a computation
/// stopped part-way leaves no empty folder behind.
pub fn check_creatable(path: &Path) -> Result<()> {
    let made = missing_folders(path);
    create_dir(path)?;
    remove_empty(&made);
    Ok(())
}

/// The folders of `path` that are not there yet, the deepest first.
pub(crate) fn missing_folders(path: &Path) -> Vec<PathBuf> {
    path.ancestors().filter(|a| !a.as_os_str().is_empty()).take_while(|a| !a.exists()).map(Path::to_path_buf).collect()
}

/// Removes `folders` (`missing_folders`, once made), the deepest first, while
/// each is empty: one another process wrote into meanwhile stays, and so
/// do the folders above it.
pub(crate) fn remove_empty(folders: &[PathBuf]) {
    folders.iter().take_while(|d| std::fs::remove_dir(d).is_ok()).for_each(drop);
}

/// Removes the temporary files (`temp_sibling`'s names) and staging folders
/// (`write_together`'s) that a killed writer left in `dir`. A live
/// process's are kept: a folder can be shared (`runs/`, where every
/// finetune points `latest`), and removing another writer's file before its
/// rename would fail that write.
pub(crate) fn remove_stale_temps(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if temp_owner(&n).is_some_and(|pid| !process_alive(pid)) {
            remove_temp(&e.path());
        }
    }
}

/// The process id that `temp_sibling` put in a temporary file's name
/// (`.{pid}.tmp.{name}`); none for any other name.
fn temp_owner(name: &str) -> Option<libc::pid_t> {
    let (pid, rest) = name.strip_prefix('.')?.split_once('.')?;
    if !rest.starts_with("tmp.") || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether process `pid` exists (one of another user counts: EPERM).
fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// An exclusive advisory lock on a run folder, held while a process writes
/// it (released when dropped, or by the kernel when the process dies, so a
/// killed run can be resumed at once).
pub struct RunLock {
    _file: std::fs::File,
}

/// Creates `dir` (an output folder) and locks it (`lock_file`); where the
/// lock cannot be taken, the folders this made go again (a disk out of
/// inodes left an empty output folder behind).
pub(crate) fn create_locked(dir: &Path, name: &str, shared: bool) -> Result<RunLock> {
    let made = missing_folders(dir);
    create_dir(dir)?;
    lock_file(dir, name, shared).inspect_err(|_| remove_empty(&made))
}

/// Locks `dir` (a run, or any command's output folder) for writing, or says
/// which process holds it.
pub(crate) fn lock_run(dir: &Path) -> Result<RunLock> {
    lock_file(dir, ".lock", false)
}

/// "No locks available" (Linux's and the BSDs' numbers).
const ENOLCK: i32 = if cfg!(target_os = "linux") { 37 } else { 77 };

/// Locks `dir/name`: exclusively, or shared with other shared holders
/// (`cv --fold i` runs share their cv folder; a whole cv excludes them).
pub(crate) fn lock_file(dir: &Path, name: &str, shared: bool) -> Result<RunLock> {
    use std::io::{Read, Seek, Write};
    let p = dir.join(name);
    // Not "cannot read" of a lock file the user never named: the folder is what cannot be written (another user's run).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| Error::file(dir, format!("cannot write into it: {e}")))?;
    let got = if shared { f.try_lock_shared() } else { f.try_lock() };
    match got {
        Ok(()) => {
            // Best effort: the holder's pid, for the message another process
            // prints (with shared holders, the last one's).
            let _ = f.set_len(0).and_then(|_| f.rewind()).and_then(|_| write!(f, "{}", std::process::id()));
            Ok(RunLock { _file: f })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let who = if pid.trim().is_empty() { "another vggft process".to_string() } else { format!("another vggft process (pid {})", pid.trim()) };
            Err(Error::file(dir, format!("is being written by {who}; wait for it to finish or stop it, then try again")))
        }
        // A file system without locks (some NFS and Lustre mounts, where
        // `cv --fold` runs of a cluster meet): write unguarded, as before locks.
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported || e.raw_os_error() == Some(ENOLCK) => Ok(RunLock { _file: f }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&p, e)),
    }
}

/// `path` made absolute through its nearest existing ancestor (`out` may not exist yet).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let mut tail = Vec::new();
    let mut p = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    loop {
        if let Ok(c) = p.canonicalize() {
            return tail.iter().rev().fold(c, |acc: PathBuf, n: &std::ffi::OsString| acc.join(n));
        }
        match (p.file_name().map(|n| n.to_os_string()), p.parent()) {
            (Some(n), Some(parent)) => {
                tail.push(n);
                p = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write in flight when `stop_writing` runs leaves neither its temporary
    /// file nor the file it was to write; writes before and after are untouched.
    #[test]
    fn stopping_removes_the_files_being_written() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&d.path().join("done.txt"), b"finished").unwrap();
        let target = d.path().join("half.txt");
        let mut seen = None;
        let r = write_atomic_with(&target, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            seen = Some(tmp.to_path_buf());
            drop(stop_writing_where(|t| t.starts_with(d.path())));
            Ok(())
        });
        assert!(r.is_err(), "the rename of a removed file fails");
        assert!(!seen.unwrap().exists() && !target.exists());
        assert_eq!(std::fs::read(d.path().join("done.txt")).unwrap(), b"finished");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
        assert!(!writing().iter().any(|t| t.starts_with(d.path())), "a finished write leaves the registry");
    }

    /// A set written together replaces the earlier set only whole: a failure
    /// after some of its files leaves the earlier set as it was, no staging
    /// folder, and an error naming the file where it was going.
    #[test]
    fn a_set_written_together_replaces_the_earlier_set_only_whole() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("eval");
        let set = |metrics: &str, tiles: &[&str]| {
            write_set(
                &dir,
                |dir, _| {
                    let _ = std::fs::remove_dir_all(dir.join("tiles"));
                },
                |stage| {
                    write_atomic(&stage.join("metrics.json"), metrics.as_bytes())?;
                    create_dir(&stage.join("tiles"))?;
                    for t in tiles {
                        if *t == "full" {
                            return Err(Error::file(stage.join("tiles").join(t), "cannot write: No space left on device"));
                        }
                        write_atomic(&stage.join("tiles").join(t), b"tile")?;
                    }
                    Ok(tiles.len())
                },
            )
        };
        let listing = || {
            let mut all: Vec<String> = walkdir(&dir).into_iter().map(|p| p.strip_prefix(&dir).unwrap().display().to_string()).collect();
            all.sort();
            all
        };
        // A failure in a folder it made: the folder goes again.
        let e = set("first", &["a.png", "full"]).unwrap_err().to_string();
        assert_eq!(e, format!("{}: cannot write: No space left on device", dir.join("tiles/full").display()));
        assert!(!dir.exists(), "the folder this call made is removed");
        assert_eq!(set("first", &["a.png", "b.png"]).unwrap(), 2);
        assert_eq!(listing(), [".lock", "metrics.json", "tiles", "tiles/a.png", "tiles/b.png"]);
        // A failure part-way keeps the earlier set whole.
        set("second", &["c.png", "full"]).unwrap_err();
        assert_eq!(listing(), [".lock", "metrics.json", "tiles", "tiles/a.png", "tiles/b.png"]);
        assert_eq!(std::fs::read_to_string(dir.join("metrics.json")).unwrap(), "first");
        // A finished set replaces it; `clear` removed the earlier tiles this set has not.
        assert_eq!(set("third", &["c.png"]).unwrap(), 1);
        assert_eq!(listing(), [".lock", "metrics.json", "tiles", "tiles/c.png"]);
        assert_eq!(std::fs::read_to_string(dir.join("metrics.json")).unwrap(), "third");
        assert!(!writing().iter().any(|t| t.starts_with(d.path())), "no staging folder left registered");
    }

    /// Every path under `dir`, folders included.
    fn walkdir(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            out.push(e.path());
            if e.path().is_dir() {
                out.extend(walkdir(&e.path()));
            }
        }
        out
    }

    /// A stop while a set is being written removes its staging folder with
    /// the files in it: the folder keeps only what it held before.
    #[test]
    fn stopping_removes_a_set_being_written() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&d.path().join("metrics.json"), b"earlier").unwrap();
        let r = write_together(
            d.path(),
            |_, _| {},
            |stage| {
                write_atomic(&stage.join("metrics.json"), b"new")?;
                drop(stop_writing_where(|t| t.starts_with(d.path())));
                write_atomic(&stage.join("confusion.png"), b"plot")
            },
        );
        assert!(r.is_err(), "a write into a removed staging folder fails");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("metrics.json")]);
        assert_eq!(std::fs::read(d.path().join("metrics.json")).unwrap(), b"earlier");
    }

    /// A stop while a set is written into folders this call made removes
    /// them again, `.lock` and all: nothing is left of the call; a folder
    /// that was there before stays.
    #[test]
    fn stopping_removes_the_folders_a_set_was_made_in() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("runs/ev");
        let r = write_set(
            &out,
            |_, _| {},
            |stage| {
                write_atomic(&stage.join("metrics.json"), b"new")?;
                assert!(out.join(".lock").exists());
                drop(stop_writing_where(|t| t.starts_with(d.path())));
                // Looked at here: a real stop ends the process now.
                assert!(!d.path().join("runs").exists(), "both folders the call made are gone at the stop");
                write_atomic(&stage.join("confusion.png"), b"plot")
            },
        );
        assert!(r.is_err(), "a write into a removed staging folder fails");
        assert!(!d.path().join("runs").exists() && d.path().is_dir(), "the folder above them, there before, stays");
        assert!(!made_folders().iter().any(|f| f[0].starts_with(d.path())), "and no longer registered");
    }

    #[test]
    fn only_a_dead_writers_temporary_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        // A pid no process has. Not a child spawned and reaped: the fork
        // would share, until its exec, the lock file other tests in this
        // process hold, and a lock they released would still be held.
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse::<libc::pid_t>().ok()).unwrap_or(99_999);
        let dead = (300..pid_max).rev().find(|&p| !process_alive(p)).unwrap();
        let dead_temp = temp_sibling(&d.path().join("metrics.json"))
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(&format!(".{}.", std::process::id()), &format!(".{dead}."));
        let live_temp = temp_sibling(&d.path().join("latest")).file_name().unwrap().to_string_lossy().into_owned();
        let names = [dead_temp.as_str(), live_temp.as_str(), ".notes.tmp.txt", ".x1.tmp.png", "a.tmp.png"];
        for n in names {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        assert_eq!(temp_owner(&dead_temp), Some(dead));
        remove_stale_temps(d.path());
        let left: Vec<bool> = names.iter().map(|n| d.path().join(n).exists()).collect();
        assert_eq!(left, [false, true, true, true, true], "only the exited process's temporary file goes: {names:?}");
        // And a staging folder (`write_together`) that process left, with what is in it.
        let staged = d.path().join(format!(".{dead}.tmp.staged"));
        std::fs::create_dir_all(staged.join("top_losses")).unwrap();
        std::fs::write(staged.join("top_losses/loss-000.png"), "").unwrap();
        remove_stale_temps(d.path());
        assert!(!staged.exists());
    }

    #[test]
    fn checking_that_a_folder_can_be_made_leaves_the_tree_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        check_creatable(&deep).unwrap();
        assert!(!d.path().join("a").exists(), "all three made, all three removed");
        std::fs::create_dir(d.path().join("a")).unwrap();
        check_creatable(&deep).unwrap();
        assert!(d.path().join("a").is_dir() && !d.path().join("a/b").exists(), "the folder that was there stays");
        std::fs::write(d.path().join("f"), "").unwrap();
        let e = check_creatable(&d.path().join("f/g")).unwrap_err().to_string();
        assert!(e.contains("is a file, not a folder"), "{e}");
    }

    /// A folder in the way of an output file is named before anything is
    /// written, and the folder and the writer's temporary file are gone.
    #[test]
    fn an_output_named_like_a_folder_is_refused_and_nothing_is_left() {
        let d = tempfile::tempdir().unwrap();
        let e = write_atomic(d.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("is a folder: give the name of a file to write"), "{e}");
        let f = d.path().join("ok.json");
        write_json(&f, &serde_json::json!({"a": 1})).unwrap();
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("ok.json")]);
    }

    /// Output names made from input names keep no line break or tab, and
    /// leave room for a prefix and an extension.
    #[test]
    fn output_stems_replace_control_characters_and_fit_a_file_name() {
        assert_eq!(output_stem(Path::new("a/x\ny\tz.tiff")), "x_y_z");
        assert_eq!(output_stem(Path::new("KA.HA1.29.tiff")), "KA.HA1.29");
        // 250 bytes of name, two-byte characters: cut at a character boundary.
        let long = format!("{}.jpg", "é".repeat(123));
        let stem = output_stem(Path::new(&long));
        assert_eq!((stem.len(), stem.chars().all(|c| c == 'é')), (200, true));
    }

    /// The longest name a filesystem takes has a temporary sibling it takes
    /// too, ending in the same extension (writers choose formats by it).
    #[test]
    fn a_temporary_sibling_of_a_longest_name_is_a_name_too() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(format!("{}.png", "a".repeat(NAME_MAX - 4)));
        let tmp = temp_sibling(&path);
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(name.len() <= NAME_MAX && name.ends_with(".png") && name.starts_with('.') && name.contains(".tmp."), "{name}");
        write_atomic(&path, b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        assert_eq!(cut_name("short.png", 20), "short.png");
        assert_eq!(cut_name("abcdefghij.png", 8), "abcd.png");
    }
}
