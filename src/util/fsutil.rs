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
