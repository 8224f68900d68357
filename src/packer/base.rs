//! The local builder from a base image, host side: what must be true before
//! Packer's qemu builder boots it (`templates/packer/local-base.json.tera`).
//!
//! In order: the base is fetched (a blob URL, written ranges only) or taken
//! as it is, unpacked (xz, gzip, zstd, a tar archive: the stream is written
//! sparsely, zero blocks skipped), read offline as the validator reads a VHD
//! (`validate::read_root`) so that an AlmaLinux file under an `ubuntu-24.04`
//! manifest is refused before it boots, converted to a qcow2 of `disk_gib`,
//! and given the provisioning an Azure VM gets at first boot — the same CD,
//! key and wire-server/IMDS stand-ins as the boot check
//! (`validate::boot::provision`), plus the allow-listed proxy. What only
//! exists now reaches Packer as `IMGFORGE_BASE_*` variables.
//!
//! Everything lands in the build's `work/` directory; `local::clean_work`
//! removes the large files after a failure.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::spec::plan::{BasePlan, Plan, redact_query};
use crate::util::Category;
use crate::util::diskfmt::Packing;
use crate::validate::boot::{self, provision::Provisioning, proxy};

/// No unpacked base may be larger than Azure's largest OS disk image here.
const MAX_UNPACKED: u64 = 1024 << 30;
/// How long fetching a base blob may take.
const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("{source_name}: {message}")]
    Unusable {
        source_name: String,
        message: String,
        hint: String,
    },
    #[error(
        "{source_name} is {found}, but the manifest's image.distro is {distro} (it must report ID={id} VERSION_ID={version})"
    )]
    WrongOs {
        source_name: String,
        found: String,
        distro: &'static str,
        id: &'static str,
        version: &'static str,
        download: String,
    },
    #[error("{context}: {message}")]
    Tool {
        context: String,
        message: String,
        package: &'static str,
    },
    #[error("{0}")]
    Fetch(#[from] crate::validate::ValidateError),
    #[error("{0}")]
    Provision(#[from] crate::validate::boot::BootError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl crate::util::Hint for BaseError {
    fn hint(&self) -> Option<String> {
        match self {
            BaseError::Unusable { hint, .. } => Some(hint.clone()),
            BaseError::WrongOs {
                distro, download, ..
            } => Some(format!(
                "give the {distro} base image ({download}), or set image.distro to what the file is"
            )),
            BaseError::Tool { package, .. } => Some(format!("apt-get install {package}")),
            BaseError::Fetch(_) => None,
            BaseError::Provision(e) => e.hint(),
            BaseError::Io { .. } => None,
        }
    }
}

impl BaseError {
    pub fn category(&self) -> Category {
        match self {
            BaseError::Unusable { .. } | BaseError::WrongOs { .. } => Category::Input,
            BaseError::Tool { .. } => Category::Tool,
            BaseError::Fetch(_) => Category::Input,
            BaseError::Provision(e) => e.category(),
            BaseError::Io { .. } => Category::Io,
        }
    }
}

/// What `prepare` found and made.
#[derive(Debug)]
pub struct Prepared {
    /// `IMGFORGE_BASE_*` for Packer's environment.
    pub env: Vec<(String, String)>,
    /// One line for the terminal and build.json.
    pub summary: String,
}

/// Makes `dir/work/base.qcow2` and the provisioning from the plan's base.
pub fn prepare(
    plan: &Plan,
    base: &BasePlan,
    dir: &Path,
    stand_in: &Path,
) -> Result<Prepared, BaseError> {
    // Absolute: Packer, QEMU and the stand-ins run in the build directory,
    // so a path relative to where imgforge was started would not resolve
    // (`--out` defaults to the relative .imgforge/builds/…).
    let dir = &std::path::absolute(dir).map_err(io(dir, "resolving the build directory"))?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).map_err(io(&work, "making the work directory"))?;
    let name = redact_query(&base.source).to_string();

    let mut file = if base.source.starts_with("https://") || base.source.starts_with("http://") {
        let dest = work.join("base.download");
        crate::util::term::status("Fetching", &format!("the base image {name}"));
        let fetched = crate::util::runtime()
            .map_err(io(&work, "starting the async runtime"))?
            .block_on(async {
                tokio::time::timeout(
                    FETCH_DEADLINE,
                    crate::validate::fetch_blob(&base.source, &dest),
                )
                .await
            })
            .map_err(|_| BaseError::Unusable {
                source_name: name.clone(),
                message: format!("not fetched within {} s", FETCH_DEADLINE.as_secs()),
                hint: "download it with azcopy and give the file as base_image".into(),
            })??;
        crate::util::term::status(
            "Fetched",
            &format!(
                "{} of {} bytes in {} request(s)",
                fetched.bytes, fetched.length, fetched.requests
            ),
        );
        dest
    } else {
        PathBuf::from(&base.source)
    };

    // Unpacked layer by layer (a tar.xz: xz, then tar), at most three deep.
    for round in 0..3 {
        let packing =
            crate::util::diskfmt::sniff(&file).map_err(io(&file, "reading the base image"))?;
        if packing == Packing::None {
            break;
        }
        let out = work.join(format!("base.unpacked{round}"));
        crate::util::term::status(
            "Unpacking",
            &format!("{} ({})", file.display(), packing.describe()),
        );
        unpack(&file, packing, &out)?;
        if file.starts_with(&work) {
            let _ = std::fs::remove_file(&file);
        }
        file = out;
    }

    // Read offline as the validator reads a VHD: a fixed VHD as it is,
    // anything else converted to one first.
    let vhd = if is_fixed_vhd(&file) {
        file.clone()
    } else {
        let v = work.join("base.vhd");
        qemu_img(
            &[
                "convert",
                "-O",
                "vpc",
                "-o",
                "subformat=fixed,force_size=on",
            ],
            &[&file, &v],
        )?;
        v
    };
    let (os, layout) = read_os(&vhd, &name)?;
    let id = crate::validate::checks::key_value(&os, "ID").unwrap_or_default();
    let version = crate::validate::checks::key_value(&os, "VERSION_ID").unwrap_or_default();
    if !crate::validate::checks::os_matches(plan.distro, &id, &version) {
        return Err(BaseError::WrongOs {
            source_name: name,
            found: format!("{id} {version}"),
            distro: plan.distro.key,
            id: base.os_release_id,
            version: base.os_release_version,
            download: base.download.clone(),
        });
    }

    let qcow = work.join("base.qcow2");
    let _ = std::fs::remove_file(&qcow);
    crate::util::term::status("Converting", &format!("the base to {}", qcow.display()));
    // A fixed VHD is its data and a footer: read as raw, exactly its length
    // less the footer (qemu's vpc driver would round the size to a CHS
    // geometry).
    let data_len = std::fs::metadata(&vhd)
        .map_err(io(&vhd, "reading the base"))?
        .len()
        - 512;
    let raw = format!(
        r#"json:{{"driver":"raw","size":{data_len},"file":{{"driver":"file","filename":{}}}}}"#,
        serde_json::to_string(&vhd.display().to_string()).expect("a string")
    );
    qemu_img(&["convert", "-O", "qcow2", &raw], &[&qcow])?;
    if vhd.starts_with(&work) {
        let _ = std::fs::remove_file(&vhd);
    }
    if file.starts_with(&work) && file != vhd {
        let _ = std::fs::remove_file(&file);
    }
    let virtual_bytes = virtual_size(&qcow)?;
    let disk_mib = plan.local.as_ref().map_or(30 * 1024, |l| l.disk_mib);
    let want = disk_mib << 20;
    if virtual_bytes > want {
        return Err(BaseError::Unusable {
            source_name: name,
            message: format!(
                "its disk is {:.1} GiB, larger than [build.local] disk_gib = {}",
                virtual_bytes as f64 / f64::from(1u32 << 30),
                disk_mib / 1024
            ),
            hint: format!(
                "set disk_gib = {} or more (a disk only grows)",
                virtual_bytes.div_ceil(1 << 30)
            ),
        });
    }
    if virtual_bytes < want {
        qemu_img(
            &["resize", "-f", "qcow2"],
            &[&qcow, Path::new(&format!("{disk_mib}M"))],
        )?;
    }

    let prov = Provisioning::prepare(&work.join("provision"))?;
    // No resource disk: the build VM writes nothing there.
    let _ = std::fs::remove_file(&prov.resource_disk);
    let allow = proxy::Allow {
        hosts: base
            .allow_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    };
    std::fs::write(
        prov.dir.join("proxy.json"),
        serde_json::to_vec_pretty(&allow).expect("plain data"),
    )
    .map_err(io(&prov.dir, "writing proxy.json"))?;

    let accel = if boot::kvm_runs(&qcow, &work) {
        "kvm"
    } else {
        "tcg"
    };
    let [smbios1, smbios3] = prov.smbios();
    let env = vec![
        ("IMGFORGE_BASE_ACCEL", accel.to_string()),
        (
            "IMGFORGE_BASE_NETDEV",
            prov.netdev(stand_in, &[], !allow.hosts.is_empty()),
        ),
        ("IMGFORGE_BASE_MAC", prov.guest.qemu_mac()),
        ("IMGFORGE_BASE_SMBIOS1", smbios1),
        ("IMGFORGE_BASE_SMBIOS3", smbios3),
        ("IMGFORGE_BASE_CDROM", prov.iso.display().to_string()),
        (
            "IMGFORGE_BASE_SSH_KEY",
            prov.private_key.display().to_string(),
        ),
        (
            "IMGFORGE_BASE_PROXY",
            format!("{}:{}", proxy::PROXY_ADDR, proxy::PROXY_PORT),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let summary = format!(
        "{name}: {id} {version}, {layout}, {:.1} GiB disk, {accel}; the VM reaches {}",
        want as f64 / f64::from(1u32 << 30),
        if allow.hosts.is_empty() {
            "nothing beyond the provisioning stand-ins".to_string()
        } else {
            allow.hosts.join(", ")
        }
    );
    Ok(Prepared { env, summary })
}

/// After Packer succeeded: the base's working copy and the build VM's key
/// go (the VM that trusted it no longer exists); the stand-ins' record, the
/// guest's identity and the allow list stay as evidence. Returns the bytes
/// freed.
pub fn after_build(dir: &Path) -> u64 {
    let work = dir.join("work");
    let mut freed = 0;
    for name in [
        "base.qcow2",
        "provision/id_ed25519",
        "provision/id_ed25519.pub",
        "provision/provisioning.iso",
    ] {
        let p = work.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&p)
            && m.is_file()
            && std::fs::remove_file(&p).is_ok()
        {
            freed += m.len();
        }
    }
    freed
}

/// The catalog distro a fixed VHD's `/etc/os-release` names, read offline
/// (for `init --base-image` without `--distro`); `None` for a packed or
/// other-format file, or an OS the catalog does not know.
pub fn distro_of(path: &Path) -> Option<&'static crate::spec::catalog::Distro> {
    if !is_fixed_vhd(path) {
        return None;
    }
    let (os, _) = read_os(path, &path.display().to_string()).ok()?;
    let id = crate::validate::checks::key_value(&os, "ID")?;
    let version = crate::validate::checks::key_value(&os, "VERSION_ID")?;
    crate::spec::catalog::DISTROS
        .iter()
        .find(|d| d.azure_base.is_some() && crate::validate::checks::os_matches(d, &id, &version))
}

fn io(path: &Path, what: &str) -> impl Fn(std::io::Error) -> BaseError {
    let context = format!("{what} ({})", path.display());
    move |source| BaseError::Io {
        context: context.clone(),
        source,
    }
}

fn is_fixed_vhd(path: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut footer = [0u8; 512];
    len >= 512
        && f.seek(SeekFrom::Start(len - 512)).is_ok()
        && f.read_exact(&mut footer).is_ok()
        && crate::validate::vhd::check(&footer, len).1.is_empty()
}

/// `/etc/os-release` and the partition table, read as the validator reads
/// the image; a disk it cannot read is refused with the validator's words.
fn read_os(vhd: &Path, name: &str) -> Result<(String, String), BaseError> {
    let disk = crate::validate::LocalDisk::open(vhd)?;
    let (text, findings, _) = crate::validate::read_root(name, Box::new(disk), |root| {
        root.read_prefix("/etc/os-release", 64 * 1024)
    });
    let layout = findings
        .iter()
        .find(|f| f.id == "disk.partition-table")
        .map_or_else(
            || "partition table unknown".to_string(),
            |f| f.message.clone(),
        );
    match text.flatten() {
        Some(bytes) => Ok((String::from_utf8_lossy(&bytes).into_owned(), layout)),
        None => {
            let why = findings
                .iter()
                .rfind(|f| f.status == crate::report::Status::Fail)
                .map_or_else(
                    || "/etc/os-release is missing".to_string(),
                    |f| format!("{} ({})", f.message, f.id),
                );
            Err(BaseError::Unusable {
                source_name: name.to_string(),
                message: format!("its root file system cannot be read: {why}"),
                hint:
                    "give the distro's Azure disk image (a Linux root on MBR or GPT, ext4 or XFS)"
                        .into(),
            })
        }
    }
}

/// One packed layer of `src` written to `out`, zero blocks as holes.
fn unpack(src: &Path, packing: Packing, out: &Path) -> Result<(), BaseError> {
    let mut cmd = if let Some((tool, args, _)) = packing.unpacker() {
        let mut c = Command::new(tool);
        c.args(args).arg(src);
        c
    } else {
        let member = tar_member(src)?;
        let mut c = Command::new("tar");
        c.arg("-xOf").arg(src).arg("--").arg(member);
        c
    };
    let package = packing.unpacker().map_or("tar", |(_, _, p)| p);
    let tool = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BaseError::Tool {
            context: format!("running {tool} to unpack {}", src.display()),
            message: e.to_string(),
            package,
        })?;
    let partial = out.with_extension("partial");
    let written = sparse_copy(child.stdout.take().expect("piped"), &partial);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(4096).read_to_string(&mut stderr);
    }
    let status = child.wait().map_err(io(src, "waiting for the unpacker"))?;
    let written = match written {
        Ok(n) if status.success() => n,
        Ok(_) => {
            let _ = std::fs::remove_file(&partial);
            return Err(BaseError::Unusable {
                source_name: src.display().to_string(),
                message: format!("{tool} failed ({status}): {}", stderr.trim()),
                hint: "download the file again (it may be cut short)".into(),
            });
        }
        Err(e) => {
            let _ = child.kill();
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if written == 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(BaseError::Unusable {
            source_name: src.display().to_string(),
            message: "it unpacks to nothing".into(),
            hint: "download the file again".into(),
        });
    }
    std::fs::rename(&partial, out).map_err(io(out, "renaming the unpacked base"))
}

/// The one disk image in a tar archive (the only file, or the only one named
/// as a disk image is).
fn tar_member(src: &Path) -> Result<String, BaseError> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(src)
        .output()
        .map_err(|e| BaseError::Tool {
            context: format!("listing {}", src.display()),
            message: e.to_string(),
            package: "tar",
        })?;
    let listing =
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(1 << 20)]).into_owned();
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| !l.ends_with('/'))
        .take(1000)
        .collect();
    let disks: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| {
            let f = f.to_ascii_lowercase();
            [".vhd", ".raw", ".img", ".qcow2", ".vhdx", ".vmdk"]
                .iter()
                .any(|e| f.ends_with(e))
        })
        .collect();
    match (files.as_slice(), disks.as_slice()) {
        ([one], _) | (_, [one]) => Ok(one.to_string()),
        _ => Err(BaseError::Unusable {
            source_name: src.display().to_string(),
            message: format!(
                "the archive holds {} file(s) and {} disk image(s) ({}), not one",
                files.len(),
                disks.len(),
                files.iter().take(5).copied().collect::<Vec<_>>().join(", ")
            ),
            hint: "unpack the disk image yourself and give it as base_image".into(),
        }),
    }
}

/// Copies `r` to a new file at `path`, leaving 64 KiB blocks of zeros as
/// holes; at most `MAX_UNPACKED` bytes.
fn sparse_copy(mut r: impl Read, path: &Path) -> Result<u64, BaseError> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::create(path).map_err(io(path, "creating the unpacked base"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(path, "reading the unpacker's output")(e)),
            }
        }
        if filled == 0 {
            break;
        }
        total += filled as u64;
        if total > MAX_UNPACKED {
            return Err(BaseError::Unusable {
                source_name: path.display().to_string(),
                message: format!("it unpacks to more than {} GiB", MAX_UNPACKED >> 30),
                hint: "give a disk image of at most 1 TiB".into(),
            });
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(filled as i64))
                .map_err(io(path, "writing the unpacked base"))?;
        } else {
            f.write_all(&buf[..filled])
                .map_err(io(path, "writing the unpacked base"))?;
        }
        if filled < buf.len() {
            break;
        }
    }
    f.set_len(total)
        .map_err(io(path, "writing the unpacked base"))?;
    Ok(total)
}

fn qemu_img(args: &[&str], paths: &[&Path]) -> Result<(), BaseError> {
    let out = Command::new("qemu-img")
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BaseError::Tool {
            context: "running qemu-img".into(),
            message: e.to_string(),
            package: "qemu-utils",
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BaseError::Unusable {
        source_name: paths
            .first()
            .map_or(String::new(), |p| p.display().to_string()),
        message: format!(
            "qemu-img {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(2000)]).trim()
        ),
        hint: "give a VHD, VHDX, qcow2, VMDK or raw disk (qemu-img reads them)".into(),
    })
}

fn virtual_size(path: &Path) -> Result<u64, BaseError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .map_err(|e| BaseError::Tool {
            context: "running qemu-img info".into(),
            message: e.to_string(),
            package: "qemu-utils",
        })?;
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .ok_or_else(|| BaseError::Unusable {
            source_name: path.display().to_string(),
            message: "qemu-img info gave no virtual size".into(),
            hint: "give a disk image qemu-img reads".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_become_holes_and_the_length_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 << 20];
        data[10] = 1;
        data[(3 << 20) + 5] = 2;
        data.truncate((4 << 20) - 100);
        let p = tmp.path().join("out");
        let n = sparse_copy(&data[..], &p).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(
            allocated <= 256 << 10,
            "{allocated} bytes allocated for two blocks"
        );
    }

    #[test]
    fn a_tar_with_one_disk_image_among_other_files_names_it_and_two_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("disk.raw"), b"x").unwrap();
        std::fs::write(d.join("README"), b"y").unwrap();
        std::fs::write(d.join("other.vhd"), b"z").unwrap();
        let tar = |name: &str, files: &[&str]| {
            let t = d.join(name);
            assert!(
                Command::new("tar")
                    .arg("-cf")
                    .arg(&t)
                    .arg("-C")
                    .arg(d)
                    .args(files)
                    .status()
                    .unwrap()
                    .success()
            );
            t
        };
        assert_eq!(
            tar_member(&tar("a.tar", &["disk.raw", "README"])).unwrap(),
            "disk.raw"
        );
        assert_eq!(tar_member(&tar("b.tar", &["README"])).unwrap(), "README");
        let e = tar_member(&tar("c.tar", &["disk.raw", "other.vhd"])).unwrap_err();
        assert!(e.to_string().contains("2 disk image(s)"), "{e}");
    }
}
