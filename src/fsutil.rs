//! Writes that never leave a half-written file or directory behind.

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
            let old = aside.path().join("old");
            std::fs::rename(dest, &old)?;
            std::fs::rename(staged, dest)?;
            drop(aside);
            return Ok(());
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
