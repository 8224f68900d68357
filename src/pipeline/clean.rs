//! `imgforge clean`: old build directories go. Each local build keeps its full
//! VHD (sparse, about 1 GiB allocated), so eight builds reached 2.6 GB.
//!
//! Pure selection (`select`) apart from the file system walk and removal.
//! A directory is a build when it holds a build.json; a build whose record says
//! `running` and was written within the last 24 hours is never touched (a
//! long stage, e.g. publishing, writes the record only between stages), nor is
//! any directory that has a mount point under it (an interrupted local build
//! could leave one; removing through it would delete the mounted file system's
//! files).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How long a `running` record may be silent before its build counts as abandoned.
pub const RUNNING_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Serialize)]
pub struct BuildDir {
    pub path: PathBuf,
    pub image: String,
    pub status: String,
    pub started_at: String,
    /// Bytes allocated on disk (sparse files count what they use).
    pub bytes: u64,
    #[serde(skip)]
    pub started: SystemTime,
    #[serde(skip)]
    pub record_written: SystemTime,
}

#[derive(Debug, Serialize)]
pub struct Decision {
    pub build: BuildDir,
    pub remove: bool,
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error("{dir}: cannot read: {source}")]
    Read {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: cannot remove: {source}")]
    Remove {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl crate::util::Hint for CleanError {
    fn hint(&self) -> Option<String> {
        match self {
            CleanError::Read { .. } => {
                Some("pass --dir with the builds' directory (default .imgforge/builds)".into())
            }
            CleanError::Remove { .. } => None,
        }
    }
}

/// Every build directory directly under `dir`, oldest first.
pub fn scan(dir: &Path) -> Result<Vec<BuildDir>, CleanError> {
    let read = |source| CleanError::Read {
        dir: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        let path = entry.path();
        // Symbolic links are not followed: only real directories are builds.
        if !entry.file_type().map_err(read)?.is_dir() {
            continue;
        }
        let record_path = path.join("build.json");
        let Ok(meta) = std::fs::symlink_metadata(&record_path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > crate::azure::http::MAX_BODY {
            continue;
        }
        let record: serde_json::Value = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let started_at = record["started_at"].as_str().unwrap_or("").to_string();
        let record_written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let started = humantime::parse_rfc3339_weak(&started_at).unwrap_or(record_written);
        out.push(BuildDir {
            bytes: allocated(&path),
            image: record["image"].as_str().unwrap_or("?").to_string(),
            status: record["status"].as_str().unwrap_or("unknown").to_string(),
            started_at,
            started,
            record_written,
            path,
        });
    }
    out.sort_by_key(|b| b.started);
    Ok(out)
}

/// Which builds go: all but the `keep` newest, and those started before
/// `now - older_than`; never a build still running.
pub fn select(
    builds: Vec<BuildDir>,
    keep: Option<usize>,
    older_than: Option<Duration>,
    now: SystemTime,
    mounted: &dyn Fn(&Path) -> bool,
) -> Vec<Decision> {
    let running = |b: &BuildDir| {
        b.status == "running"
            && now.duration_since(b.record_written).unwrap_or_default() < RUNNING_GRACE
    };
    // A running build does not take one of the --keep places: "keep 1" keeps
    // the last finished build while the next one runs.
    let finished = builds.iter().filter(|b| !running(b)).count();
    let mut seen = 0usize;
    builds
        .into_iter()
        .map(|b| {
            let is_running = running(&b);
            if !is_running {
                seen += 1;
            }
            let newest_rank = finished + 1 - seen; // 1 = newest finished
            let beyond_keep = keep.is_some_and(|k| newest_rank > k);
            let too_old = older_than
                .is_some_and(|age| now.duration_since(b.started).unwrap_or_default() > age);
            let (remove, why) = if is_running {
                (false, "still running".to_string())
            } else if mounted(&b.path) {
                (
                    false,
                    "a file system is mounted under it: unmount it first (see `findmnt`)".into(),
                )
            } else if beyond_keep {
                (true, format!("not among the {} newest", keep.unwrap_or(0)))
            } else if too_old {
                (true, format!("started {}", b.started_at))
            } else {
                (false, "kept".to_string())
            };
            Decision {
                build: b,
                remove,
                why,
            }
        })
        .collect()
}

/// Whether any mount point lies at or under `dir` (from /proc/self/mountinfo).
pub fn has_mount_under(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal (\040).
        .map(|p| p.replace("\\040", " "))
        .any(|p| Path::new(&p).starts_with(&dir))
}

pub fn remove(d: &Decision) -> Result<(), CleanError> {
    std::fs::remove_dir_all(&d.build.path).map_err(|source| CleanError::Remove {
        dir: d.build.path.clone(),
        source,
    })
}

/// Bytes allocated under `dir`, not following links.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(name: &str, status: &str, days_ago: u64, now: SystemTime) -> BuildDir {
        let t = now - Duration::from_secs(days_ago * 86400);
        BuildDir {
            path: PathBuf::from(name),
            image: name.into(),
            status: status.into(),
            started_at: humantime::format_rfc3339_seconds(t).to_string(),
            bytes: 1,
            started: t,
            record_written: t,
        }
    }

    #[test]
    fn the_newest_are_kept_and_running_builds_are_never_removed() {
        let now = SystemTime::now();
        let builds = vec![
            build("a", "succeeded", 30, now),
            build("b", "running", 0, now),
            build("c", "failed", 2, now),
            build("d", "succeeded", 1, now),
        ];
        let decide = |keep, older| {
            select(builds.clone(), keep, older, now, &|_| false)
                .into_iter()
                .map(|d| d.remove)
                .collect::<Vec<_>>()
        };
        // Oldest first, as `scan` sorts; the running build takes no --keep place.
        assert_eq!(decide(Some(1), None), vec![true, false, true, false]);
        assert_eq!(decide(Some(2), None), vec![true, false, false, false]);
        assert_eq!(
            decide(None, Some(Duration::from_secs(7 * 86400))),
            vec![true, false, false, false]
        );
        assert_eq!(decide(None, None), vec![false; 4]);
        // A "running" record silent for more than a day is an abandoned build.
        let abandoned = vec![build("x", "running", 3, now)];
        assert!(select(abandoned, Some(0), None, now, &|_| false)[0].remove);
        // Nothing with a mount under it.
        let one = vec![build("m", "failed", 9, now)];
        let d = &select(one, Some(0), None, now, &|_| true)[0];
        assert!(!d.remove && d.why.contains("mounted"), "{}", d.why);
    }
}
