//! Writes that never leave a half-written file or directory behind, and reads
//! of user-named inputs that cannot hang or exhaust memory.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgforge-tmp-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Moves a fully written directory `staged` to `dest`. An existing `dest` is
/// replaced only when `replace` is set; it is moved aside first and removed
/// after the new one is in place, so `dest` is never half old, half new.
pub fn install_dir(staged: &Path, dest: &Path, replace: bool) -> std::io::Result<()> {
    if dest.exists() {
        let empty = dest.is_dir() && std::fs::read_dir(dest)?.next().is_none();
        if empty {
            std::fs::remove_dir(dest)?;
        } else if replace {
            let parent = dest.parent().unwrap_or(Path::new("."));
            let aside = tempfile::Builder::new()
                .prefix(".imgforge-old-")
                .tempdir_in(if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                })?;
            let aside = aside.keep();
            let old = aside.join("old");
            std::fs::rename(dest, &old)?;
            if let Err(e) = std::fs::rename(staged, dest) {
                // Put the old one back: nothing was replaced.
                let _ = std::fs::rename(&old, dest);
                let _ = std::fs::remove_dir(&aside);
                return Err(e);
            }
            // Removed now, and a failure said: a hidden leftover would hold
            // a whole build's disk unseen.
            return remove_tree(&aside).map_err(|e| {
                std::io::Error::other(format!(
                    "{} replaced, but the old one, moved to {}, could not be removed: {e} (`imgforge clean` removes it)",
                    dest.display(),
                    aside.display()
                ))
            });
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists and is not empty; choose another directory or pass --force to replace it",
                    dest.display()
                ),
            ));
        }
    }
    std::fs::rename(staged, dest)
}

/// `remove_dir_all` that stays on `dir`'s device and never follows links.
pub(crate) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::symlink_metadata(dir)?;
    if !root.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    // Depth first: a directory is removed once it is empty.
    let mut stack = vec![(dir.to_path_buf(), false)];
    while let Some((d, emptied)) = stack.pop() {
        if emptied {
            std::fs::remove_dir(&d)?;
            continue;
        }
        stack.push((d.clone(), true));
        for e in std::fs::read_dir(&d)? {
            let path = e?.path();
            let m = std::fs::symlink_metadata(&path)?;
            if m.is_dir() {
                if m.dev() != root.dev() {
                    return Err(std::io::Error::other(format!(
                        "{} is on another file system (a mount point): unmount it first",
                        path.display()
                    )));
                }
                stack.push((path, false));
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs the call fills in.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // u32 on some targets
    let (avail, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Some(avail.saturating_mul(size))
}

/// Input files are at most this big: manifests, pool configs, credentials,
/// templates, build records and user scripts are kilobytes.
pub const MAX_INPUT: u64 = 64 * 1024 * 1024;

/// Reads a user-named input file: refuses what is not a regular file (a FIFO
/// would block the open, `/dev/zero` never ends, a directory is no input) and
/// anything over `MAX_INPUT`, before reading a byte.
pub fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    check_regular(&meta)?;
    if meta.len() > MAX_INPUT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} bytes is more than an input file of imgforge's can be ({} MiB)",
                meta.len(),
                MAX_INPUT / (1024 * 1024)
            ),
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// As `read_input`, as UTF-8 text.
pub fn read_input_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_input(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// A regular file, or an error saying what it is instead.
pub fn check_regular(meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file"),
    ))
}
