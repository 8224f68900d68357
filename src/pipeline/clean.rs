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

/// How old a staging directory must be before `clean` takes it for a leftover.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(10 * 60);

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
    /// The process holding the directory's lock (a build running in it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<String>,
    /// A staging directory an interrupted render or `--force` left
    /// (`.imgforge-render-*`, `.imgforge-old-*`), not a build.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub leftover: bool,
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
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".imgforge-old-") || name.starts_with(".imgforge-render-") {
            let written = std::fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(BuildDir {
                bytes: allocated(&path),
                image: String::new(),
                status: "leftover".into(),
                started_at: humantime::format_rfc3339_seconds(written).to_string(),
                started: written,
                record_written: written,
                locked_by: None,
                leftover: true,
                path,
            });
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
            locked_by: crate::util::lock::holder(&path).map(|h| h.who),
            leftover: false,
            path,
        });
    }
    out.sort_by_key(|b| b.started);
    Ok(out)
}

/// The rules a `clean` run was given.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// Keep the N newest *succeeded* builds of each image.
    pub keep: Option<usize>,
    /// Remove builds started longer ago than this.
    pub older_than: Option<Duration>,
}

/// Which builds go. A rule that keeps a build wins over one that removes it
/// (as restic's `forget` policies combine), and a succeeded build — a built
/// image — is never removed to keep an unsuccessful one:
/// - `--keep N` counts succeeded builds **per image name**; the N newest of
///   each image stay. Of its unsuccessful builds (failed, cancelled, dry
///   runs) only the newest attempt after its last success stays (it may be
///   resumed); older attempts go.
/// - `--older-than AGE` removes builds started before `now - AGE`, except
///   those `--keep` keeps when both are given.
/// - Never removed: a build still running (its directory locked by a live
///   process, or a `running` record written within `RUNNING_GRACE`) or any
///   directory with a mount point under it.
pub fn select(
    builds: Vec<BuildDir>,
    rules: Rules,
    now: SystemTime,
    mounted: &dyn Fn(&Path) -> bool,
) -> Vec<Decision> {
    let running = |b: &BuildDir| {
        b.locked_by.is_some()
            || (b.status == "running"
                && now.duration_since(b.record_written).unwrap_or_default() < RUNNING_GRACE)
    };
    let succeeded = |b: &BuildDir| b.status == "succeeded";
    // Per image, newest first: the rank of each succeeded build, and the
    // newest unsuccessful attempt after the last success.
    let mut rank = vec![0usize; builds.len()];
    let mut newest_attempt = vec![false; builds.len()];
    let mut newest_success: Vec<Option<usize>> = vec![None; builds.len()];
    let mut images: Vec<&str> = builds.iter().map(|b| b.image.as_str()).collect();
    images.sort_unstable();
    images.dedup();
    for image in images {
        let mut seen_success = 0usize;
        let mut seen_attempt = false;
        let mut first_success = None;
        for i in (0..builds.len()).rev() {
            let b = &builds[i];
            if b.image != image || running(b) || b.leftover {
                continue;
            }
            if succeeded(b) {
                seen_success += 1;
                rank[i] = seen_success;
                first_success.get_or_insert(i);
            } else if seen_success == 0 && !seen_attempt {
                seen_attempt = true;
                newest_attempt[i] = true;
            }
            newest_success[i] = first_success;
        }
    }
    let names: Vec<String> = builds
        .iter()
        .map(|b| b.path.display().to_string())
        .collect();
    builds
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let too_old = |age: Duration| now.duration_since(b.started).unwrap_or_default() > age;
            // (remove, why) for each rule given; None where the rule says nothing.
            let by_keep = rules.keep.map(|k| {
                if succeeded(&b) {
                    if rank[i] <= k {
                        (false, format!("one of the {k} newest succeeded builds of {}", b.image))
                    } else {
                        (true, format!("not among the {k} newest succeeded builds of {}", b.image))
                    }
                } else if newest_attempt[i] {
                    (
                        false,
                        format!(
                            "the newest attempt at {} after its last success ({}; `build --resume` can continue it)",
                            b.image, b.status
                        ),
                    )
                } else {
                    let newer = newest_success[i]
                        .map(|j| format!("a later build succeeded: {}", names[j]))
                        .unwrap_or_else(|| format!("a later attempt at {} exists", b.image));
                    (true, format!("{}, superseded ({newer})", b.status))
                }
            });
            let by_age = rules.older_than.map(|age| {
                if too_old(age) {
                    (true, format!("started {}", b.started_at))
                } else {
                    (false, format!("started {}, within the age limit", b.started_at))
                }
            });
            let (remove, why) = if b.leftover {
                // What an interrupted render or `--force` left behind; given a
                // few minutes in case a render is writing it right now.
                if now.duration_since(b.record_written).unwrap_or_default() < LEFTOVER_GRACE {
                    (false, "a render's or --force's staging directory, written in the last minutes".into())
                } else if mounted(&b.path) {
                    (false, "a file system is mounted under it: unmount it first (see `findmnt`)".into())
                } else if rules.keep.is_some() || rules.older_than.is_some() {
                    (true, "left by an interrupted render or --force (not a build)".into())
                } else {
                    (false, "left by an interrupted render or --force".into())
                }
            } else if let Some(who) = &b.locked_by {
                (false, format!("a build is running in it ({who})"))
            } else if running(&b) {
                (false, "still running".to_string())
            } else if mounted(&b.path) {
                (
                    false,
                    "a file system is mounted under it: unmount it first (see `findmnt`)".into(),
                )
            } else {
                match (by_keep, by_age) {
                    (Some((false, why)), _) | (_, Some((false, why))) => (false, why),
                    (Some((true, k)), Some((true, a))) => (true, format!("{k}; {a}")),
                    (Some(r), None) | (None, Some(r)) => r,
                    (None, None) => (false, "kept".to_string()),
                }
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
/// A mount table that cannot be read counts as a mount: nothing is removed
/// on a guess.
pub fn has_mount_under(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return true;
    };
    mount_points(&info).any(|p| p.starts_with(&dir))
}

/// The mount points of a mountinfo table (field 5), unescaped: the kernel
/// writes space, tab, newline and backslash as `\ooo` octal escapes.
fn mount_points(info: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
    use std::os::unix::ffi::OsStringExt;
    info.split(|&b| b == b'\n')
        .filter_map(|l| l.split(|&b| b == b' ').nth(4))
        .map(|p| PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(p))))
}

fn unescape_octal(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let digits = p.get(i + 1..i + 4);
        match digits {
            Some(d) if p[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(p[i]);
                i += 1;
            }
        }
    }
    out
}

/// Removes a build directory, holding its lock while it does (a build that
/// starts meanwhile is refused), and never crossing into another file
/// system: a directory on another device under it is an error, not emptied.
pub fn remove(d: &Decision) -> Result<(), CleanError> {
    let err = |source| CleanError::Remove {
        dir: d.build.path.clone(),
        source,
    };
    let _lock = if d.build.leftover {
        None
    } else {
        match crate::util::lock::try_lock(&d.build.path) {
            Ok(l) => Some(l),
            Err(e) => return Err(err(std::io::Error::other(e.to_string()))),
        }
    };
    crate::util::fsutil::remove_tree(&d.build.path).map_err(err)
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

    fn build_of(
        image: &str,
        name: &str,
        status: &str,
        hours_ago: u64,
        now: SystemTime,
    ) -> BuildDir {
        let t = now - Duration::from_secs(hours_ago * 3600);
        BuildDir {
            path: PathBuf::from(name),
            image: image.into(),
            status: status.into(),
            started_at: humantime::format_rfc3339_seconds(t).to_string(),
            bytes: 1,
            started: t,
            record_written: t,
            locked_by: None,
            leftover: false,
        }
    }

    fn removed(decisions: &[Decision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.remove)
            .map(|d| d.build.path.to_str().unwrap())
            .collect()
    }

    fn keep(n: usize) -> Rules {
        Rules {
            keep: Some(n),
            older_than: None,
        }
    }

    #[test]
    fn keep_counts_succeeded_builds_per_image_and_never_trades_one_for_a_failure() {
        let now = SystemTime::now();
        // Oldest first, as `scan` sorts. The reported case: three succeeded
        // builds and a newer cancelled stub; `--keep 1` removed the images.
        let builds = vec![
            build_of("gpu", "gpu-1", "succeeded", 90, now),
            build_of("gpu", "gpu-2", "succeeded", 80, now),
            build_of("gpu", "gpu-3", "succeeded", 70, now),
            build_of("gpu", "gpu-4", "cancelled", 60, now),
            build_of("hpc", "hpc-1", "succeeded", 50, now),
            build_of("hpc", "hpc-2", "failed", 40, now),
            build_of("hpc", "hpc-3", "succeeded", 30, now),
            build_of("hpc", "hpc-4", "validated", 20, now),
            build_of("hpc", "hpc-5", "failed", 10, now),
        ];
        let d = select(builds.clone(), keep(1), now, &|_| false);
        // gpu-3 (newest success) and gpu-4 (newest attempt since) stay; hpc-3
        // and hpc-5 stay; hpc-2 (before a success) and hpc-4 (superseded
        // attempt) go.
        assert_eq!(
            removed(&d),
            vec!["gpu-1", "gpu-2", "hpc-1", "hpc-2", "hpc-4"]
        );
        let why = |name: &str| {
            d.iter()
                .find(|x| x.build.path == Path::new(name))
                .unwrap()
                .why
                .clone()
        };
        assert!(
            why("gpu-3").contains("newest succeeded"),
            "{}",
            why("gpu-3")
        );
        assert!(why("gpu-4").contains("--resume"), "{}", why("gpu-4"));
        assert!(why("hpc-2").contains("hpc-3"), "{}", why("hpc-2"));
        let d = select(builds.clone(), keep(2), now, &|_| false);
        assert_eq!(removed(&d), vec!["gpu-1", "hpc-2", "hpc-4"]);
        // An image with no success keeps its newest attempt only.
        let only_failures = vec![
            build_of("x", "x-1", "failed", 3, now),
            build_of("x", "x-2", "cancelled", 2, now),
        ];
        assert_eq!(
            removed(&select(only_failures, keep(0), now, &|_| false)),
            vec!["x-1"]
        );
    }

    #[test]
    fn a_rule_that_keeps_wins_and_running_or_mounted_builds_stay() {
        let now = SystemTime::now();
        let builds = vec![
            build_of("a", "a-old", "succeeded", 30 * 24, now),
            build_of("a", "a-run", "running", 1, now),
            build_of("a", "a-mid", "succeeded", 3 * 24, now),
            build_of("a", "a-new", "succeeded", 24, now),
        ];
        let week = Some(Duration::from_secs(7 * 86400));
        let age = Rules {
            keep: None,
            older_than: week,
        };
        assert_eq!(
            removed(&select(builds.clone(), age, now, &|_| false)),
            vec!["a-old"]
        );
        // --keep 1 alone removes a-mid; with --older-than 7d, a-mid is young
        // enough to stay (keeping wins), a-old is both and goes.
        assert_eq!(
            removed(&select(builds.clone(), keep(1), now, &|_| false)),
            vec!["a-old", "a-mid"]
        );
        let both = Rules {
            keep: Some(1),
            older_than: week,
        };
        assert_eq!(
            removed(&select(builds.clone(), both, now, &|_| false)),
            vec!["a-old"]
        );
        assert!(removed(&select(builds.clone(), Rules::default(), now, &|_| false)).is_empty());
        // A "running" record silent for more than a day is an abandoned build.
        // It counts as an attempt: `--keep` keeps it while it is the newest.
        let abandoned = vec![
            build_of("x", "x-1", "running", 72, now),
            build_of("x", "x-2", "failed", 48, now),
        ];
        assert_eq!(
            removed(&select(abandoned.clone(), keep(0), now, &|_| false)),
            vec!["x-1"]
        );
        let day = Rules {
            keep: None,
            older_than: Some(Duration::from_secs(86400)),
        };
        assert_eq!(
            removed(&select(abandoned, day, now, &|_| false)),
            vec!["x-1", "x-2"]
        );
        // A locked directory is running whatever its record says.
        let mut locked = build_of("y", "y", "failed", 72, now);
        locked.locked_by = Some("pid 42 since then".into());
        let d = &select(vec![locked], keep(0), now, &|_| false)[0];
        assert!(!d.remove && d.why.contains("pid 42"), "{}", d.why);
        // Nothing with a mount under it.
        let one = vec![build_of("m", "m", "failed", 9, now)];
        let d = &select(one, keep(0), now, &|_| true)[0];
        assert!(!d.remove && d.why.contains("mounted"), "{}", d.why);
    }

    #[test]
    fn leftovers_of_a_render_go_once_they_are_minutes_old() {
        let now = SystemTime::now();
        let mut old = build_of("", ".imgforge-old-abc", "leftover", 1, now);
        old.leftover = true;
        let mut fresh = build_of("", ".imgforge-render-def", "leftover", 0, now);
        fresh.leftover = true;
        fresh.record_written = now - Duration::from_secs(30);
        let d = select(vec![old, fresh], keep(3), now, &|_| false);
        assert_eq!(removed(&d), vec![".imgforge-old-abc"]);
    }

    #[test]
    fn mount_points_are_unescaped_whole() {
        let info = b"36 35 98:0 / /mnt/a\\040b rw - ext4 /dev/x rw\n\
37 35 98:0 / /b/t\\011ab\\134x\\012nl rw - ext4 /dev/y rw\n";
        let points: Vec<PathBuf> = mount_points(info).collect();
        assert_eq!(points[0], PathBuf::from("/mnt/a b"));
        assert_eq!(points[1], PathBuf::from("/b/t\tab\\x\nnl"));
    }

    #[test]
    fn remove_tree_stops_at_nothing_on_its_own_device_and_follows_no_link() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let dir = base.path().join("build");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        crate::util::fsutil::remove_tree(&dir).unwrap();
        assert!(!dir.exists());
        assert!(outside.join("keep").exists());
    }
}
