//! RPM's package database as EL 9 keeps it: `/var/lib/rpm/rpmdb.sqlite`,
//! an SQLite file whose `Packages` table holds one header blob per
//! installed package (rpm ≥ 4.16's sqlite backend). The file is copied out
//! of the image (bounded) into a private temporary directory, with its
//! write-ahead log when one is there, and opened with SQLite itself
//! (rusqlite, SQLite bundled): a file format with pages, overflow chains and
//! a journal is not one to re-implement. The header blobs are parsed by
//! hand: the format is an index of 16-byte entries and a data store
//! (rpm's `headerImport`), and the `rpm` crate reads package files (lead,
//! signature, header with its magic), not the database's bare blobs.
//!
//! Every bound is rpm's own (at most 65,535 index entries, 256 MiB of data
//! per header) or smaller; a blob that breaks one, or points outside itself,
//! is an error naming the package row: no partial package list.
//!
//! EL 8 keeps the database in Berkeley DB (`/var/lib/rpm/Packages`), a
//! format only libdb reads (Berkeley DB 5.3; 6 and later are AGPL, which is
//! why Fedora and RHEL 9 moved to SQLite). Such an image is reported as not
//! read, with the way out: convert the database during the build
//! (`rpmdb --rebuilddb --define '_db_backend sqlite'`, rpm ≥ 4.16, which EL 8
//! does not have), or inspect it inside the build VM.

use std::path::Path;

use super::Package;

pub const SQLITE: &str = "/var/lib/rpm/rpmdb.sqlite";
pub const SQLITE_WAL: &str = "/var/lib/rpm/rpmdb.sqlite-wal";
pub const BERKELEY: &str = "/var/lib/rpm/Packages";

/// rpm's own limits (lib/header.c: HEADER_TAGS_MAX, HEADER_DATA_MAX).
const MAX_TAGS: u32 = 0xffff;
const MAX_DATA: u32 = 256 << 20;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TAG_SOURCERPM: u32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

/// The installed packages of a copied-out database (`db`, and its WAL when
/// the image has one), sorted by name and architecture.
pub fn parse(db: &[u8], wal: Option<&[u8]>) -> Result<Vec<Package>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let path = dir.path().join("rpmdb.sqlite");
    std::fs::write(&path, db).map_err(|e| format!("copying it out: {e}"))?;
    if let Some(wal) = wal {
        std::fs::write(dir.path().join("rpmdb.sqlite-wal"), wal)
            .map_err(|e| format!("copying its write-ahead log out: {e}"))?;
    }
    read_packages(&path)
}

fn read_packages(path: &Path) -> Result<Vec<Package>, String> {
    use rusqlite::{Connection, OpenFlags};
    // Read-write on our own copy: SQLite applies a write-ahead log only
    // when it may write the database (the image is never touched).
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("not an SQLite database: {e}"))?;
    let sql_err = |e: rusqlite::Error| format!("not RPM's SQLite database: {e}");
    let mut stmt = conn
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .map_err(sql_err)?;
    let mut rows = stmt.query([]).map_err(sql_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        let hnum: i64 = row.get(0).map_err(sql_err)?;
        let blob: Vec<u8> = row.get(1).map_err(|e| format!("package row {hnum}: {e}"))?;
        let p = header(&blob).map_err(|why| format!("package row {hnum}: {why}"))?;
        out.push(p);
    }
    out.sort();
    Ok(out)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One header blob: `il`, `dl`, `il` index entries (tag, type, offset,
/// count), then `dl` bytes of data.
pub fn header(blob: &[u8]) -> Result<Package, String> {
    if blob.len() < 8 {
        return Err(format!("a header of {} bytes", blob.len()));
    }
    let il = be32(blob, 0);
    let dl = be32(blob, 4);
    if il == 0 || il > MAX_TAGS {
        return Err(format!("{il} index entries (rpm allows 1 to {MAX_TAGS})"));
    }
    if dl > MAX_DATA {
        return Err(format!("{dl} bytes of data (rpm allows {MAX_DATA})"));
    }
    let data_at = 8 + 16 * il as usize;
    let need = data_at + dl as usize;
    if blob.len() < need {
        return Err(format!("{} bytes, but its index says {need}", blob.len()));
    }
    let data = &blob[data_at..need];
    let mut name = None;
    let mut version = None;
    let mut release = None;
    let mut arch = None;
    let mut epoch = None;
    let mut source = None;
    for i in 0..il as usize {
        let e = 8 + 16 * i;
        let (tag, kind, offset, count) = (
            be32(blob, e),
            be32(blob, e + 4),
            be32(blob, e + 8) as usize,
            be32(blob, e + 12),
        );
        let slot = match tag {
            TAG_NAME => &mut name,
            TAG_VERSION => &mut version,
            TAG_RELEASE => &mut release,
            TAG_ARCH => &mut arch,
            TAG_SOURCERPM => &mut source,
            TAG_EPOCH => {
                if kind != TYPE_INT32 || count != 1 || offset + 4 > data.len() {
                    return Err("a malformed EPOCH".into());
                }
                epoch = Some(be32(data, offset));
                continue;
            }
            _ => continue,
        };
        if kind != TYPE_STRING {
            return Err(format!("tag {tag} is of type {kind}, not a string"));
        }
        let text = data
            .get(offset..)
            .and_then(|rest| rest.iter().position(|&b| b == 0).map(|end| &rest[..end]))
            .ok_or_else(|| format!("tag {tag}'s string runs outside the header"))?;
        let text = std::str::from_utf8(text).map_err(|_| format!("tag {tag} is not UTF-8"))?;
        *slot = Some(text.to_string());
    }
    let name = name.ok_or("no NAME")?;
    let version = version.ok_or_else(|| format!("{name}: no VERSION"))?;
    let release = release.ok_or_else(|| format!("{name}: no RELEASE"))?;
    let evr = match epoch {
        Some(e) => format!("{e}:{version}-{release}"),
        None => format!("{version}-{release}"),
    };
    Ok(Package {
        source: source
            .as_deref()
            .and_then(source_name)
            .unwrap_or(&name)
            .to_string(),
        name,
        version: evr,
        // gpg-pubkey entries (imported keys) have no architecture.
        arch: arch.unwrap_or_default(),
    })
}

/// `bash-5.1.8-9.el9.src.rpm` → `bash`.
fn source_name(srpm: &str) -> Option<&str> {
    let base = srpm
        .strip_suffix(".src.rpm")
        .or_else(|| srpm.strip_suffix(".nosrc.rpm"))?;
    let mut parts = base.rsplitn(3, '-');
    let (_release, _version, name) = (parts.next()?, parts.next()?, parts.next()?);
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header blob as rpm's headerExport writes one: (tag, type, data).
    pub(crate) fn blob(entries: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, kind, bytes) in entries {
            if *kind == TYPE_INT32 {
                while data.len() % 4 != 0 {
                    data.push(0);
                }
            }
            index.extend(tag.to_be_bytes());
            index.extend(kind.to_be_bytes());
            index.extend((data.len() as u32).to_be_bytes());
            index.extend(1u32.to_be_bytes());
            data.extend(bytes);
        }
        let mut out = Vec::new();
        out.extend((entries.len() as u32).to_be_bytes());
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(index);
        out.extend(data);
        out
    }

    fn s(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn a_header_gives_name_epoch_version_release_arch_and_source() {
        let b = blob(&[
            (TAG_NAME, TYPE_STRING, s("bind-libs")),
            (TAG_VERSION, TYPE_STRING, s("9.16.23")),
            (TAG_RELEASE, TYPE_STRING, s("24.el9_5")),
            (TAG_EPOCH, TYPE_INT32, 32u32.to_be_bytes().to_vec()),
            (TAG_ARCH, TYPE_STRING, s("x86_64")),
            (
                TAG_SOURCERPM,
                TYPE_STRING,
                s("bind-9.16.23-24.el9_5.src.rpm"),
            ),
        ]);
        let p = header(&b).unwrap();
        assert_eq!(
            (
                p.name.as_str(),
                p.version.as_str(),
                p.arch.as_str(),
                p.source.as_str()
            ),
            ("bind-libs", "32:9.16.23-24.el9_5", "x86_64", "bind")
        );
        // An imported key: no arch, no source package.
        let b = blob(&[
            (TAG_NAME, TYPE_STRING, s("gpg-pubkey")),
            (TAG_VERSION, TYPE_STRING, s("b86b3716")),
            (TAG_RELEASE, TYPE_STRING, s("61e69f29")),
        ]);
        let p = header(&b).unwrap();
        assert_eq!((p.arch.as_str(), p.source.as_str()), ("", "gpg-pubkey"));
    }

    #[test]
    fn a_damaged_header_is_an_error_never_a_package() {
        let good = blob(&[
            (TAG_NAME, TYPE_STRING, s("bash")),
            (TAG_VERSION, TYPE_STRING, s("5.1.8")),
            (TAG_RELEASE, TYPE_STRING, s("9.el9")),
        ]);
        assert!(header(&good).is_ok());
        // Cut anywhere: refused.
        for cut in [0, 7, 8, 20, good.len() - 1] {
            assert!(header(&good[..cut]).is_err(), "cut at {cut}");
        }
        // An index of 2^31 entries does not allocate or loop.
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        assert!(header(&huge).unwrap_err().contains("index entries"));
        // A string pointing past the data.
        let mut far = good.clone();
        far[8 + 8..8 + 12].copy_from_slice(&0x00ff_ffffu32.to_be_bytes());
        assert!(header(&far).unwrap_err().contains("outside the header"));
        // No terminating NUL before the end of the data.
        let mut unterminated = good.clone();
        let last = unterminated.len() - 1;
        unterminated[last] = b'x';
        assert!(header(&unterminated).is_err());
        // No RELEASE.
        let b = blob(&[
            (TAG_NAME, TYPE_STRING, s("bash")),
            (TAG_VERSION, TYPE_STRING, s("5.1.8")),
        ]);
        assert_eq!(header(&b).unwrap_err(), "bash: no RELEASE");
    }

    #[test]
    fn source_package_names_come_from_the_source_rpm() {
        assert_eq!(source_name("glibc-2.34-100.el9.src.rpm"), Some("glibc"));
        assert_eq!(
            source_name("python-setuptools-53.0.0-13.el9.src.rpm"),
            Some("python-setuptools")
        );
        assert_eq!(source_name("nonsense"), None);
        assert_eq!(source_name("-1-2.src.rpm"), None);
    }

    #[test]
    fn a_file_that_is_not_rpms_database_is_an_error() {
        assert!(parse(b"not sqlite at all", None).is_err());
        // SQLite, but no Packages table.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.sqlite");
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE Other (a INTEGER);").unwrap();
        drop(c);
        let err = parse(&std::fs::read(&p).unwrap(), None).unwrap_err();
        assert!(err.contains("not RPM's SQLite database"), "{err}");
        // RPM's table with one damaged blob: named by its row.
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO Packages (blob) VALUES (?1), (?2)",
            (
                blob(&[
                    (TAG_NAME, TYPE_STRING, s("bash")),
                    (TAG_VERSION, TYPE_STRING, s("5.1.8")),
                    (TAG_RELEASE, TYPE_STRING, s("9.el9")),
                ]),
                vec![0u8; 5],
            ),
        )
        .unwrap();
        drop(c);
        let err = parse(&std::fs::read(&p).unwrap(), None).unwrap_err();
        assert_eq!(err, "package row 2: a header of 5 bytes");
    }
}
