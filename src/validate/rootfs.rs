//! What the file checks need of a root filesystem, and its readers.
//!
//! The checks ask three things: up to N bytes of a file (symlinks followed,
//! as the node will see them), whether a path exists (the last component not
//! followed, like `lstat`), and a directory's names. Every read is bounded by
//! the caller's limit, never by a size the image claims.
//!
//! - ext4: [ext4-view](https://crates.io/crates/ext4-view) (follows links itself).
//! - XFS (AlmaLinux/RHEL 8 and 9, Batch's `batch.node.el 8/9`):
//!   [lamxfs](https://crates.io/crates/lamxfs). Chosen over `xfs-core`, which
//!   parses on-disk structures but has no path, directory or file API;
//!   lamxfs reads v4 and v5 layouts, checks v5 CRCs, replays a dirty log in
//!   memory, caps its own allocations (directories at 2²⁰ entries, files at
//!   256 MiB; imgforge reads through `read_file_at`, so only the caller's
//!   limit counts) and forbids `unsafe`. It follows no symlink, so links are
//!   resolved here ([`follow`]), at most 40 of them per path as Linux does.
//! - A directory on the host, as if it were the root: the fast unit tests of
//!   the checks, with no image to build.

use std::cell::RefCell;

/// A root filesystem, read-only, as the file checks see it.
pub trait RootFs {
    /// Up to `limit` bytes of the regular file at `path`, symlinks followed;
    /// `None` when it is missing or cannot be read.
    fn read_prefix(&self, path: &str, limit: u64) -> Option<Vec<u8>>;
    /// Whether `path` exists; a symlink at the end counts as itself.
    fn exists(&self, path: &str) -> bool;
    /// The names in the directory `dir` (not `.` and `..`); empty when it
    /// is missing or cannot be read.
    fn list(&self, dir: &str) -> Vec<String>;
    /// The target of `path` when `path` itself is a symlink (its parents
    /// resolved); `None` for anything else.
    fn read_link(&self, path: &str) -> Option<String>;
    /// Whether `path` is a directory (symlinks followed).
    fn is_dir(&self, path: &str) -> bool;
}

/// Linux's limit on symlinks followed while resolving one path (ELOOP).
const MAX_LINKS: usize = 40;

/// What a path's component is, for [`follow`].
pub enum Kind {
    Link(String),
    Other,
}

/// Resolves every symlink in `path` (the last one too when `last` is true),
/// as the kernel would inside this root: absolute targets start again at
/// the root, `..` never climbs above it. `lookup` tells what a resolved
/// prefix is (`None`: it does not exist). `None` when a component is missing
/// or more than 40 links are followed (a loop).
pub fn follow(
    path: &str,
    last: bool,
    mut lookup: impl FnMut(&str) -> Option<Kind>,
) -> Option<String> {
    let mut todo: std::collections::VecDeque<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = format!(
            "/{}",
            done.iter()
                .chain([&c])
                .cloned()
                .collect::<Vec<_>>()
                .join("/")
        );
        match lookup(&here)? {
            Kind::Link(target) if last || !todo.is_empty() => {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                if target.starts_with('/') {
                    done.clear();
                }
                for (i, t) in target.split('/').filter(|t| !t.is_empty()).enumerate() {
                    todo.insert(i, t.to_string());
                }
            }
            _ => done.push(c),
        }
    }
    Some(format!("/{}", done.join("/")))
}

/// ext4, through ext4-view.
pub struct Ext4Root(pub ext4_view::Ext4);

impl RootFs for Ext4Root {
    fn read_prefix(&self, path: &str, limit: u64) -> Option<Vec<u8>> {
        let mut file = self.0.open(path).ok()?;
        read_bounded(limit, |buf| file.read_bytes(buf).map_err(|_| ()))
    }

    fn exists(&self, path: &str) -> bool {
        self.0.symlink_metadata(path).is_ok()
    }

    fn read_link(&self, path: &str) -> Option<String> {
        if !self.0.symlink_metadata(path).ok()?.is_symlink() {
            return None;
        }
        let target = self.0.read_link(path).ok()?;
        Some(target.to_str().ok()?.to_string())
    }

    fn is_dir(&self, path: &str) -> bool {
        self.0.metadata(path).is_ok_and(|m| m.is_dir())
    }

    fn list(&self, dir: &str) -> Vec<String> {
        match self.0.read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().as_str().ok().map(str::to_string))
                .filter(|n| n != "." && n != "..")
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Reads into a growing buffer, 64 KiB at a time, until `limit` bytes or the end.
fn read_bounded(
    limit: u64,
    mut read: impl FnMut(&mut [u8]) -> Result<usize, ()>,
) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while (bytes.len() as u64) < limit {
        let want = chunk.len().min((limit - bytes.len() as u64) as usize);
        match read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(()) => return None,
        }
    }
    Some(bytes)
}

/// XFS, through lamxfs (which takes `&mut self` for every read).
pub struct XfsRoot<R: lamxfs::BlockRead>(pub RefCell<lamxfs::Xfs<R>>);

impl<R: lamxfs::BlockRead> XfsRoot<R> {
    fn lookup(fs: &mut lamxfs::Xfs<R>, path: &str) -> Option<Kind> {
        let inode = fs.resolve(lamxfs::Path::new(path.as_bytes())).ok()?;
        let meta = fs.metadata(&inode).ok()?;
        Some(if meta.is_symlink() {
            let target = fs.read_link(lamxfs::Path::new(path.as_bytes())).ok()?;
            Kind::Link(String::from_utf8_lossy(&target).into_owned())
        } else {
            Kind::Other
        })
    }

    fn resolved(&self, path: &str, last: bool) -> Option<String> {
        let mut fs = self.0.borrow_mut();
        follow(path, last, |p| Self::lookup(&mut fs, p))
    }
}

impl<R: lamxfs::BlockRead> RootFs for XfsRoot<R> {
    fn read_prefix(&self, path: &str, limit: u64) -> Option<Vec<u8>> {
        let real = self.resolved(path, true)?;
        let mut fs = self.0.borrow_mut();
        let inode = fs.resolve(lamxfs::Path::new(real.as_bytes())).ok()?;
        let mut offset = 0u64;
        read_bounded(limit, |buf| {
            let n = fs.read_file_at(&inode, offset, buf).map_err(|_| ())?;
            offset += n as u64;
            Ok(n)
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.resolved(path, false).is_some()
    }

    fn read_link(&self, path: &str) -> Option<String> {
        let real = self.resolved(path, false)?;
        match Self::lookup(&mut self.0.borrow_mut(), &real)? {
            Kind::Link(target) => Some(target),
            Kind::Other => None,
        }
    }

    fn is_dir(&self, path: &str) -> bool {
        let Some(real) = self.resolved(path, true) else {
            return false;
        };
        let mut fs = self.0.borrow_mut();
        fs.resolve(lamxfs::Path::new(real.as_bytes()))
            .ok()
            .and_then(|inode| fs.metadata(&inode).ok())
            .is_some_and(|m| m.is_dir())
    }

    fn list(&self, dir: &str) -> Vec<String> {
        let Some(real) = self.resolved(dir, true) else {
            return Vec::new();
        };
        match self
            .0
            .borrow_mut()
            .read_dir(lamxfs::Path::new(real.as_bytes()))
        {
            Ok(entries) => entries
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .filter(|n| n != "." && n != "..")
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A directory on the host read as if it were the image's root: links are
/// resolved inside it, never out of it. The unit tests' root: each check
/// runs over a directory instead of a built image.
#[cfg(test)]
pub struct DirRoot(pub std::path::PathBuf);

#[cfg(test)]
impl DirRoot {
    fn host(&self, path: &str) -> std::path::PathBuf {
        self.0.join(path.trim_start_matches('/'))
    }

    fn resolved(&self, path: &str, last: bool) -> Option<std::path::PathBuf> {
        let real = follow(path, last, |p| {
            let host = self.host(p);
            let meta = std::fs::symlink_metadata(&host).ok()?;
            Some(if meta.file_type().is_symlink() {
                Kind::Link(
                    std::fs::read_link(&host)
                        .ok()?
                        .to_string_lossy()
                        .into_owned(),
                )
            } else {
                Kind::Other
            })
        })?;
        Some(self.host(&real))
    }
}

#[cfg(test)]
impl RootFs for DirRoot {
    fn read_prefix(&self, path: &str, limit: u64) -> Option<Vec<u8>> {
        use std::io::Read;
        let host = self.resolved(path, true)?;
        if !std::fs::symlink_metadata(&host).ok()?.is_file() {
            return None;
        }
        let mut file = std::fs::File::open(host).ok()?;
        read_bounded(limit, |buf| file.read(buf).map_err(|_| ()))
    }

    fn exists(&self, path: &str) -> bool {
        self.resolved(path, false).is_some()
    }

    fn read_link(&self, path: &str) -> Option<String> {
        let host = self.resolved(path, false)?;
        if !std::fs::symlink_metadata(&host)
            .ok()?
            .file_type()
            .is_symlink()
        {
            return None;
        }
        Some(
            std::fs::read_link(host)
                .ok()?
                .to_string_lossy()
                .into_owned(),
        )
    }

    fn is_dir(&self, path: &str) -> bool {
        self.resolved(path, true)
            .is_some_and(|h| std::fs::symlink_metadata(h).is_ok_and(|m| m.is_dir()))
    }

    fn list(&self, dir: &str) -> Vec<String> {
        let Some(host) = self.resolved(dir, true) else {
            return Vec::new();
        };
        match std::fs::read_dir(host) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(table: &[(&str, &str)]) -> impl FnMut(&str) -> Option<Kind> {
        let table: Vec<(String, String)> = table
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |p: &str| {
            Some(match table.iter().find(|(a, _)| a == p) {
                Some((_, t)) if t == "<missing>" => return None,
                Some((_, t)) => Kind::Link(t.clone()),
                None => Kind::Other,
            })
        }
    }

    #[test]
    fn links_resolve_inside_the_root_as_the_kernel_would() {
        // AlmaLinux: /etc/os-release -> ../usr/lib/os-release.
        let os = links(&[("/etc/os-release", "../usr/lib/os-release")]);
        assert_eq!(
            follow("/etc/os-release", true, os).as_deref(),
            Some("/usr/lib/os-release")
        );
        // Not followed at the end for lstat; followed in the middle.
        let l = links(&[("/lib", "usr/lib")]);
        assert_eq!(follow("/lib", false, l).as_deref(), Some("/lib"));
        let l = links(&[("/lib", "usr/lib")]);
        assert_eq!(
            follow("/lib/modules", true, l).as_deref(),
            Some("/usr/lib/modules")
        );
        // An absolute target starts at the image's root; `..` stops there.
        let l = links(&[("/a/b", "/../../etc/x")]);
        assert_eq!(follow("/a/b", true, l).as_deref(), Some("/etc/x"));
    }

    #[test]
    fn a_link_loop_or_a_missing_component_resolves_to_nothing() {
        let l = links(&[("/a", "b"), ("/b", "a")]);
        assert_eq!(follow("/a", true, l), None);
        let l = links(&[("/etc", "<missing>")]);
        assert_eq!(follow("/etc/os-release", true, l), None);
        // A chain of 40 links is followed; 41 is a loop to the kernel.
        let chain: Vec<(String, String)> = (0..41)
            .map(|i| (format!("/l{i}"), format!("l{}", i + 1)))
            .collect();
        let table: Vec<(&str, &str)> = chain
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(follow("/l1", true, links(&table)).as_deref(), Some("/l41"));
        assert_eq!(follow("/l0", true, links(&table)), None);
    }
}
