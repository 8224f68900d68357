//! Fuzzing on the stable toolchain (cargo-fuzz needs nightly, which this
//! project's machines cannot fetch): seeded mutation of real inputs — a good
//! image's footer, partition table and ext4 / XFS metadata, the contrib
//! manifests, a Batch Shipyard pool config, a page list — fed to the same
//! library entry points the CLI uses. Each target runs in a child process of
//! this test binary with its address space capped at 4 GiB, so a panic, an
//! abort, a stack overflow or an allocation sized by the input ends that
//! child, and the parent names the target, the seed and the case number that
//! reproduce it:
//!
//!   cargo test --test fuzz                                     # CI: a bounded run
//!   IMGFORGE_FUZZ_CASES=200000 IMGFORGE_FUZZ_SEED=7 cargo test --release --test fuzz
//!   IMGFORGE_FUZZ_ONLY=ext4:1:4711 cargo test --test fuzz -- --include-ignored child
//!
//! Every crash it has found is a regression case at the end of this file.

mod common;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use common::*;
use imgforge::validate::{Disk, ReadStats};

/// xorshift64*: small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: u64) -> Rng {
        Rng((seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

const BYTES: [u8; 6] = [0, 1, 0x7F, 0x80, 0xFE, 0xFF];
const WORDS: [u64; 9] = [
    0,
    1,
    511,
    512,
    4096,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// A few mutations of `data` at offsets `at` picks: bit flips, boundary
/// bytes and little-endian words, copied runs, zeroed runs.
fn mutate(rng: &mut Rng, data: &mut [u8], mut at: impl FnMut(&mut Rng) -> usize) {
    if data.is_empty() {
        return;
    }
    for _ in 0..1 + rng.below(6) {
        let o = at(rng).min(data.len() - 1);
        match rng.below(6) {
            0 => data[o] ^= 1 << rng.below(8),
            1 => data[o] = BYTES[rng.below(6) as usize],
            2 | 3 => {
                let w = WORDS[rng.below(9) as usize].to_le_bytes();
                let n = if rng.below(2) == 0 { 4 } else { 8 };
                let end = (o + n).min(data.len());
                data[o..end].copy_from_slice(&w[..end - o]);
            }
            4 => {
                let n = 1 + rng.below(256) as usize;
                let from = rng.below(data.len() as u64) as usize;
                let n = n.min(data.len() - from).min(data.len() - o);
                data.copy_within(from..from + n, o);
            }
            _ => {
                let end = (o + 1 + rng.below(64) as usize).min(data.len());
                data[o..end].fill(0);
            }
        }
    }
}

/// A text mutated: byte mutations, and lines duplicated, dropped or cut.
fn mutate_text(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(lines.len() as u64) as usize;
        match rng.below(4) {
            0 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            1 => {
                lines.remove(i);
            }
            2 => {
                let cut = rng.below(lines[i].len() as u64 + 1) as usize;
                lines[i].truncate(cut);
            }
            _ => {
                let l = &mut lines[i];
                let len = l.len();
                mutate(rng, l, |r| r.below(len as u64) as usize);
            }
        }
        if lines.is_empty() {
            break;
        }
    }
    lines.join(&b'\n')
}

/// A disk image held as its data blocks only (a sparse 320 MiB image costs
/// what it holds), with a per-case patch over it.
struct Sparse {
    size: u64,
    blocks: HashMap<u64, Vec<u8>>,
}

const BLOCK: u64 = 4096;

impl Sparse {
    fn load(path: &Path) -> Sparse {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        let mut blocks = HashMap::new();
        let mut buf = vec![0u8; BLOCK as usize];
        for b in 0..size.div_ceil(BLOCK) {
            let n = file.read_at(&mut buf, b * BLOCK).unwrap();
            if buf[..n].iter().any(|&x| x != 0) {
                let mut block = buf.clone();
                block[n..].fill(0);
                blocks.insert(b, block);
            }
        }
        Sparse { size, blocks }
    }
}

#[derive(Clone)]
struct Patched {
    base: Arc<Sparse>,
    patch: HashMap<u64, Vec<u8>>,
}

impl Patched {
    fn block(&self, b: u64) -> Option<&Vec<u8>> {
        self.patch.get(&b).or_else(|| self.base.blocks.get(&b))
    }
}

impl Disk for Patched {
    fn size(&self) -> u64 {
        self.base.size
    }
    fn read_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.base.size)
            .ok_or("read past the end of the disk")?;
        let mut at = offset;
        while at < end {
            let b = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let n = ((BLOCK as usize) - within).min((end - at) as usize);
            let dst = &mut buf[(at - offset) as usize..(at - offset) as usize + n];
            match self.block(b) {
                Some(block) => dst.copy_from_slice(&block[within..within + n]),
                None => dst.fill(0),
            }
            at += n as u64;
        }
        Ok(())
    }
    fn stats(&self) -> ReadStats {
        ReadStats::default()
    }
}

/// One case on a disk image: a few mutations, each in a data block picked at
/// random among `blocks` (the metadata and files the readers walk).
fn disk_case(base: &Arc<Sparse>, blocks: &[u64], rng: &mut Rng, plan: &imgforge::spec::plan::Plan) {
    let mut disk = Patched {
        base: base.clone(),
        patch: HashMap::new(),
    };
    // One case in eight: a storm of 100-500 random byte flips over the
    // blocks that hold data (how the first hostile-input review found an
    // allocation the ext4 reader sized from a damaged field).
    if rng.below(8) == 0 {
        for _ in 0..100 + rng.below(400) {
            let b = blocks[rng.below(blocks.len() as u64) as usize];
            let mut block = disk
                .block(b)
                .cloned()
                .unwrap_or_else(|| vec![0; BLOCK as usize]);
            block[rng.below(BLOCK) as usize] = rng.next() as u8;
            disk.patch.insert(b, block);
        }
    }
    for _ in 0..1 + rng.below(3) {
        // Half in a block that holds data, half anywhere in the first 16 MiB
        // (bitmaps, free inodes, the journal: zeros the readers may trust).
        let b = if rng.below(2) == 0 {
            blocks[rng.below(blocks.len() as u64) as usize]
        } else {
            rng.below(base.size.min(16 << 20) / BLOCK)
        };
        let mut block = disk
            .block(b)
            .cloned()
            .unwrap_or_else(|| vec![0; BLOCK as usize]);
        mutate(rng, &mut block, |r| r.below(BLOCK) as usize);
        disk.patch.insert(b, block);
    }
    // `inspect` walks the same damaged disk through its own reads.
    let _ = imgforge::inspect::inspect_disk("fuzz", Box::new(disk.clone()));
    let v = imgforge::validate::validate("fuzz", Box::new(disk), None, plan);
    // What the case reached, for the run's tally: how far the readers went.
    let failed: Vec<&str> = v
        .report
        .findings
        .iter()
        .filter(|f| f.status == imgforge::report::Status::Fail)
        .map(|f| f.id.as_str())
        .collect();
    let reached = if failed.is_empty() {
        "all checks pass".to_string()
    } else {
        format!("first failure {}", failed[0])
    };
    *TALLY.lock().unwrap().entry(reached).or_insert(0) += 1;
}

/// Outcomes of the disk cases in this child, printed at its end.
static TALLY: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn plan_of(manifest: &str) -> imgforge::spec::plan::Plan {
    let m = imgforge::spec::manifest::Manifest::load(&repo().join(manifest)).unwrap();
    imgforge::spec::plan::Plan::new(&m)
}

/// The fixtures a target needs, made once per child.
enum Target {
    Footer(Vec<u8>),
    Disk {
        base: Arc<Sparse>,
        blocks: Vec<u64>,
        plan: imgforge::spec::plan::Plan,
    },
    Manifest(Vec<(String, String)>),
    Pool(String, imgforge::spec::plan::Plan, tempfile::TempDir),
    PageList(String),
    /// A real build record, written mutated to a file and read back.
    Record(String, tempfile::TempDir),
    /// A recorded service answer (Batch supported images, Resource Manager
    /// storage accounts), mutated as text and parsed as JSON first.
    Json(String, fn(&serde_json::Value)),
    /// A text database read as bytes (dpkg's status).
    Text(String, fn(&[u8])),
    /// A binary record, mutated byte by byte (an RPM header blob).
    Blob(Vec<u8>, fn(&[u8])),
}

const TARGETS: &[&str] = &[
    "footer",
    "partitions",
    "ext4",
    "xfs",
    "manifest",
    "pool",
    "page-list",
    "build-record",
    "batch-images",
    "arm-accounts",
    "dpkg-status",
    "rpm-header",
    "stand-in",
];

/// cloud-init's health report (its template, a NotReady with details).
const HEALTH: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Health><GoalStateIncarnation>1</GoalStateIncarnation><Container><ContainerId>c</ContainerId><RoleInstanceList><Role><InstanceId>i</InstanceId><Health><State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus><Description>x &amp; y</Description></Details></Health></Role></RoleInstanceList></Container></Health>";

fn setup(name: &str, dir: &Path) -> Target {
    let tree = dir.join("tree");
    match name {
        "footer" => {
            let vhd = small_image(dir, &tree, Layout::Mbr);
            let bytes = std::fs::read(&vhd).unwrap();
            Target::Footer(bytes[bytes.len() - 512..].to_vec())
        }
        "partitions" | "ext4" => {
            let vhd = small_image(dir, &tree, Layout::Gpt);
            let base = Arc::new(Sparse::load(&vhd));
            let mut blocks: Vec<u64> = base.blocks.keys().copied().collect();
            blocks.sort();
            if name == "partitions" {
                // The MBR, the GPT header and entries, the footer.
                blocks.retain(|&b| b < 8 || b + 1 >= base.size.div_ceil(BLOCK));
            }
            Target::Disk {
                base,
                blocks,
                plan: plan_of("contrib/legacy/gpu-ubuntu1604.toml"),
            }
        }
        "xfs" => {
            good_alma_tree(&tree, &[29876, 29877, 8080]);
            let vhd = disk_image(dir, "xfs", Layout::Gpt, RootFs::Xfs { tree: Some(&tree) }, 0);
            let base = Arc::new(Sparse::load(&vhd));
            let mut blocks: Vec<u64> = base.blocks.keys().copied().collect();
            blocks.sort();
            Target::Disk {
                base,
                blocks,
                plan: plan_of("contrib/legacy/managed-image-almalinux8.toml"),
            }
        }
        "manifest" => {
            let mut seeds = Vec::new();
            for e in std::fs::read_dir(repo().join("contrib")).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    seeds.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
                }
            }
            seeds.sort();
            Target::Manifest(seeds)
        }
        "pool" => Target::Pool(
            "pool_specification:\n  id: gpu\n  vm_configuration:\n    platform_image:\n      publisher: Canonical\n      offer: UbuntuServer\n      sku: 16.04-LTS\n      native: false\n  vm_size: STANDARD_NC6\n  vm_count:\n    dedicated: 40\n    low_priority: 0\n  inter_node_communication_enabled: false\n  ssh:\n    username: shipyard\n".into(),
            plan_of("contrib/legacy/gpu-ubuntu1604.toml"),
            tempfile::tempdir().unwrap(),
        ),
        "page-list" => Target::PageList(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange><PageRange><Start>4096</Start><End>8191</End></PageRange><ClearRange><Start>8192</Start><End>9215</End></ClearRange><NextMarker>2!abc</NextMarker></PageList>".into(),
        ),
        "build-record" => Target::Record(
            std::fs::read_to_string(repo().join("tests/fixtures/build/vhd-copies.json")).unwrap(),
            tempfile::tempdir().unwrap(),
        ),
        "batch-images" => Target::Json(
            std::fs::read_to_string(repo().join("tests/fixtures/batch/supported-images-page-1.json"))
                .unwrap(),
            imgforge::fuzzing::supported_images_page,
        ),
        "arm-accounts" => Target::Json(
            std::fs::read_to_string(repo().join("tests/fixtures/arm/storage-accounts-page-1.json"))
                .unwrap(),
            imgforge::fuzzing::storage_accounts_page,
        ),
        "dpkg-status" => Target::Text(
            "Package: libc6\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nMulti-Arch: same\nSource: glibc\nVersion: 2.36-9+deb12u9\nDepends: libgcc-s1\nDescription: GNU C Library\n Contains the standard libraries.\n .\n More.\n\nPackage: jq\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 1.6-2.1\nSource: jq (1.6-2.1)\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n".into(),
            |b| {
                let _ = imgforge::inspect::dpkg::parse(b);
            },
        ),
        // One package's header blob from RPM's database (name, version,
        // release, arch as rpm's headerExport lays them out).
        "rpm-header" => Target::Blob(
            rpm_header("bash", "5.1.8", "9.el9", "x86_64", 0),
            |b| {
                let _ = imgforge::inspect::rpmdb::header(b);
            },
        ),
        // What a hostile guest sends the boot check's wire server and IMDS.
        "stand-in" => Target::Text(
            format!(
                "GET /metadata/instance/compute?api-version=2021-08-01&extended=true HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n\
                 GET /machine/?comp=goalstate HTTP/1.1\r\nx-ms-version: 2012-11-30\r\n\r\n\
                 POST /machine?comp=health HTTP/1.1\r\nContent-Length: {}\r\n\r\n{HEALTH}",
                HEALTH.len()
            ),
            |b| {
                use imgforge::validate::boot::standin::{Role, read_request, respond};
                let guest = serde_json::from_value(serde_json::json!({
                    "user": "imgforge", "hostname": "h", "vm_id": "v", "container_id": "c",
                    "instance_id": "i", "mac": "6045BD000001", "public_key": "ssh-ed25519 A",
                    "location": "westus2", "vm_size": "Standard_D2s_v5"
                }))
                .unwrap();
                let mut r = b;
                while let Ok(Some(req)) = read_request(&mut r) {
                    for role in [Role::Wire, Role::Imds, Role::Egress] {
                        let _ = respond(role, &req, &guest);
                    }
                }
            },
        ),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn small_image(dir: &Path, tree: &Path, layout: Layout) -> std::path::PathBuf {
    good_ubuntu_tree(tree);
    disk_image(
        dir,
        "good",
        layout,
        RootFs::Ext4 {
            tree,
            dirty_journal: false,
        },
        0,
    )
}

fn run_case(target: &Target, rng: &mut Rng) {
    match target {
        Target::Footer(footer) => {
            let mut f = footer.clone();
            mutate(rng, &mut f, |r| r.below(512) as usize);
            let f: [u8; 512] = f.try_into().unwrap();
            let _ = imgforge::validate::vhd::check(&f, rng.below(1 << 40));
        }
        Target::Disk { base, blocks, plan } => disk_case(base, blocks, rng, plan),
        Target::Manifest(seeds) => {
            let (path, text) = &seeds[rng.below(seeds.len() as u64) as usize];
            let bytes = mutate_text(rng, text);
            let source = String::from_utf8_lossy(&bytes).into_owned();
            if let Ok(m) = imgforge::spec::manifest::Manifest::parse(Path::new(path), source) {
                let plan = imgforge::spec::plan::Plan::new(&m);
                let _ = plan.to_text();
            }
        }
        Target::Pool(text, plan, dir) => {
            let path = dir.path().join("pool.yaml");
            std::fs::write(&path, mutate_text(rng, text)).unwrap();
            if let Ok(config) = imgforge::pool::ShipyardFile::load_pool(&path) {
                let _ = imgforge::pool::check(&config, Some(plan), false, false);
            }
        }
        Target::PageList(xml) => {
            let bytes = mutate_text(rng, xml);
            let _ = imgforge::azure::storage::parse_page_list(&String::from_utf8_lossy(&bytes));
        }
        Target::Record(text, dir) => {
            let path = dir.path().join("build.json");
            std::fs::write(&path, mutate_text(rng, text)).unwrap();
            imgforge::fuzzing::build_record(&path);
        }
        Target::Json(text, read) => {
            let bytes = mutate_text(rng, text);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                read(&v);
            }
        }
        Target::Text(text, read) => read(&mutate_text(rng, text)),
        Target::Blob(seed, read) => {
            let mut b = seed.clone();
            let len = b.len() as u64;
            mutate(rng, &mut b, |r| r.below(len) as usize);
            // Cut short as often as not: lengths are what a header lies about.
            if rng.below(2) == 0 {
                b.truncate(rng.below(len + 1) as usize);
            }
            read(&b);
        }
    }
}

/// Cases per target in one run: IMGFORGE_FUZZ_CASES, else 300 (CI).
fn cases() -> u64 {
    std::env::var("IMGFORGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn seed() -> u64 {
    std::env::var("IMGFORGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The child: runs one target's cases (or the single case of
/// IMGFORGE_FUZZ_ONLY=target:seed:case), printing each case before it runs
/// so the parent can name the one that killed it.
#[test]
#[ignore = "run by fuzz_targets_survive_mutated_inputs in a child process"]
fn child() {
    let Ok(spec) = std::env::var("IMGFORGE_FUZZ_ONLY") else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let name = parts[0];
    let seed: u64 = parts
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(seed);
    let only: Option<u64> = parts.get(2).and_then(|s| s.parse().ok());
    let dir = tempfile::tempdir().unwrap();
    let target = setup(name, dir.path());
    let range: Range<u64> = match only {
        Some(c) => c..c + 1,
        None => 0..cases(),
    };
    use std::io::Write;
    let mut err = std::io::stderr();
    for case in range {
        let _ = writeln!(err, "fuzz-case {name}:{seed}:{case}");
        run_case(&target, &mut Rng::new(seed, case));
    }
    for (outcome, n) in TALLY.lock().unwrap().iter() {
        let _ = writeln!(err, "fuzz-tally {name}: {n} × {outcome}");
    }
    let _ = writeln!(err, "fuzz-done {name}");
}

#[test]
fn fuzz_targets_survive_mutated_inputs() {
    let mut failures = Vec::new();
    for name in TARGETS {
        let started = std::time::Instant::now();
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "child",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("IMGFORGE_FUZZ_ONLY", format!("{name}:{}", seed()));
        // An allocation sized by the input fails fast instead of swapping.
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 4 << 30,
                    rlim_max: 4 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &limit);
                Ok(())
            });
        }
        let r = run(&mut cmd);
        let last = r
            .stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("fuzz-case "))
            .unwrap_or("(before the first case)")
            .to_string();
        let ran = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("fuzz-case "))
            .count();
        eprintln!(
            "fuzz {name}: {ran} cases in {:.1} s, exit {}",
            started.elapsed().as_secs_f64(),
            r.code
        );
        for l in r.stderr.lines().filter(|l| l.starts_with("fuzz-tally ")) {
            eprintln!("  {l}");
        }
        if r.code != 0 || !r.stderr.contains(&format!("fuzz-done {name}")) {
            let tail: Vec<&str> = r.stderr.lines().rev().take(8).collect();
            failures.push(format!(
                "{name}: died at case {last} (rerun: IMGFORGE_FUZZ_ONLY={last} cargo test --test fuzz -- --include-ignored child)\n    {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
