//! One build at a time in a build directory.
//!
//! Two `imgforge build` runs in one directory (a second `--resume`, a
//! `--force` over a running build, `clean` while a build is resumed) destroy
//! each other's work: one deletes or replaces what the other is writing. A
//! build holds an exclusive `flock(2)` on `DIR/.lock` for as long as it
//! runs; the kernel drops the lock when the process ends however it ends, so
//! a lock left by a killed build is never mistaken for a live one (the file
//! stays, with the dead process's id, and is simply locked again). The file
//! holds the holder's process id and start time, for the refusal's message.
//! Written by hand over `libc::flock`: the crates that wrap it (fs2, fd-lock)
//! add nothing a dozen lines do not, and a lock file must not be opened
//! through a link the build directory could hold (`O_NOFOLLOW`).

use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a build directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The kernel releases the lock when this descriptor closes; the file
    /// stays (removing it would race with a process opening it).
    _file: std::fs::File,
}

/// Who holds a directory's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// What the lock file says (`pid 1234 since 2026-12-03T08:00:00Z`), or
    /// "another process" when it says nothing readable.
    pub who: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{dir}: a build is running in this directory ({})", .holder.who)]
    Held { dir: PathBuf, holder: Holder },
    #[error("{path}: cannot lock: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::util::Hint for LockError {
    fn hint(&self) -> Option<String> {
        match self {
            LockError::Held { .. } => Some(
                "wait for it to end (or stop it with Ctrl-C / kill -INT), or build into another directory with --out"
                    .into(),
            ),
            LockError::Io { .. } => None,
        }
    }
}

impl LockError {
    pub fn category(&self) -> crate::util::Category {
        match self {
            LockError::Held { .. } => crate::util::Category::Input,
            LockError::Io { .. } => crate::util::Category::Io,
        }
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Takes `dir`'s lock without waiting; `Held` names the process that has it.
pub fn try_lock(dir: &Path) -> Result<DirLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = open(&path).map_err(io)?;
    // A lock this process released can still be held for a moment by a
    // child another thread forked while the descriptor was open: the child
    // shares it until it execs (O_CLOEXEC closes it then). So a refusal that
    // names this very process is tried again for up to half a second.
    let mine = format!("pid {} ", std::process::id());
    let mut tries = 0;
    loop {
        // SAFETY: flock on a file descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(err));
        }
        let holder = read_holder(&mut file);
        tries += 1;
        if !holder.who.starts_with(&mine) || tries > 25 {
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let me = format!(
        "pid {} since {}\n",
        std::process::id(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(me.as_bytes()).map_err(io)?;
    Ok(DirLock { _file: file })
}

/// Who holds `dir`'s lock, if anyone does now (a lock file left by a process
/// that ended is not held). Takes and releases the lock to find out.
pub fn holder(dir: &Path) -> Option<Holder> {
    match try_lock(dir) {
        Ok(_) => None,
        Err(LockError::Held { holder, .. }) => Some(holder),
        // No lock file can be made (a read-only directory): nobody builds there.
        Err(LockError::Io { .. }) => None,
    }
}

fn read_holder(file: &mut std::fs::File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.take(200).read_to_string(&mut text);
    let who = text
        .lines()
        .next()
        .map(str::trim)
        .filter(|l| l.starts_with("pid ") && l.chars().all(|c| c.is_ascii_graphic() || c == ' '))
        .unwrap_or("another process")
        .to_string();
    Holder { who }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts as another process's would.
        match try_lock(dir.path()) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(
                    holder.who.split(' ').nth(1),
                    Some(std::process::id().to_string().as_str()),
                    "{holder:?}"
                );
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(holder(dir.path()).is_some());
        drop(first);
        assert_eq!(holder(dir.path()), None);
        let _again = try_lock(dir.path()).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_not_held() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LOCK_FILE),
            "pid 999999 since 2020-01-01T00:00:00Z\n",
        )
        .unwrap();
        assert_eq!(holder(dir.path()), None);
        let _l = try_lock(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            text.starts_with(&format!("pid {} ", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn a_lock_file_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(try_lock(dir.path()), Err(LockError::Io { .. })));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
