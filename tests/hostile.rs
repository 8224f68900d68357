//! Hostile servers: credentials never follow a redirect and never travel in
//! clear text beyond this machine. Each case runs a loopback server that
//! answers 307 towards a second loopback "witness" listener; the witness must
//! see no connection at all (reqwest's default policy would follow).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Counts connections to an address for as long as it lives (at most 60 s).
struct Witness {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
}

impl Witness {
    fn on(ip: &str) -> Witness {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                match listener.accept() {
                    Ok(_) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Witness { addr, seen }
    }

    fn connections(&self) -> usize {
        // Give a follower time to arrive.
        std::thread::sleep(Duration::from_millis(300));
        self.seen.load(Ordering::SeqCst)
    }
}

/// A loopback HTTP server that stops by itself after `secs`: each connection
/// gets its own thread, its request head read (bounded), then `answer`.
fn serve(
    secs: u64,
    answer: impl Fn(std::net::TcpStream, String) + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let answer = answer.clone();
            std::thread::spawn(move || {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                answer(conn, String::from_utf8_lossy(&head).into_owned());
            });
        }
    });
    addr
}

/// Answers every request with `307 Location: <to><path>`; stops by itself.
fn redirector(to: SocketAddr) -> SocketAddr {
    serve(60, move |mut conn, head| {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let reply = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = conn.write_all(reply.as_bytes());
    })
}

fn small_vhd(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("d.raw");
    std::fs::write(&raw, vec![7u8; 1024 * 1024]).unwrap();
    let vhd = dir.join("d.vhd");
    raw_to_fixed_vhd(&raw, &vhd);
    vhd
}

#[test]
fn a_storage_endpoint_that_redirects_gets_no_second_request() {
    let tmp = tempfile::tempdir().unwrap();
    let witness = Witness::on("127.0.0.1");
    let front = redirector(witness.addr);
    let r = run(imgforge()
        .env("IMGFORGE_STORAGE_KEY_ACCT", "a2V5LWJ5dGVzLWZvci10ZXN0cw==")
        .env("IMGFORGE_HTTP_NO_POOL", "1")
        .arg("upload")
        .arg(small_vhd(tmp.path()))
        .args(["--to", "acct", "--blob-endpoint"])
        .arg(format!("http://{front}/{{account}}")));
    assert_ne!(r.code, 0, "{}", r.all());
    assert_eq!(witness.connections(), 0, "a request followed the redirect");
    assert!(r.all().contains("307"), "{}", r.all());
    assert!(r.all().contains("redirect"), "{}", r.all());
}

#[test]
fn a_token_endpoint_that_redirects_never_gets_the_secret_re_posted() {
    let tmp = tempfile::tempdir().unwrap();
    let witness = Witness::on("127.0.0.1");
    let front = redirector(witness.addr);
    let r = run(imgforge()
        .env("AZURE_AUTHORITY_HOST", format!("http://{front}"))
        .env_remove("AZURE_STORAGE_KEY")
        .arg("upload")
        .arg(small_vhd(tmp.path()))
        .args(["--to", "acct", "--blob-endpoint"])
        .arg(format!("http://{front}/{{account}}")));
    assert_ne!(r.code, 0, "{}", r.all());
    assert_eq!(witness.connections(), 0, "the token request followed");
    assert!(r.all().contains("redirect"), "{}", r.all());
    assert!(!r.all().contains(CANARY));
}

#[test]
fn a_sas_is_not_sent_in_clear_text_off_the_allow_list() {
    // 127.0.0.2 is this machine too, but not on the plain-http allow-list: a
    // SAS must not be sent there, and the witness proves nothing was.
    let witness = Witness::on("127.0.0.2");
    let url = format!(
        "http://{}/acct/images/d.vhd?sv=2021-08-06&sr=b&sp=r&sig=c2lnbmF0dXJl",
        witness.addr
    );
    let r = run(imgforge()
        .args(["validate", "--manifest"])
        .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml"))
        .arg(&url));
    assert_ne!(r.code, 0, "{}", r.all());
    assert_eq!(witness.connections(), 0, "the SAS went over plain http");
    assert!(r.all().contains("https"), "{}", r.all());
    assert!(!r.all().contains("c2lnbmF0dXJl"), "{}", r.all());
}

#[test]
fn fifos_devices_and_directories_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let manifest = repo().join("contrib/legacy/gpu-ubuntu1604.toml");
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["plan".into(), fifo.clone().into()],
        vec!["plan".into(), "/dev/zero".into()],
        vec![
            "validate".into(),
            "--manifest".into(),
            manifest.clone().into(),
            fifo.clone().into(),
        ],
        vec![
            "validate".into(),
            "--manifest".into(),
            manifest.clone().into(),
            "/dev/zero".into(),
        ],
        vec![
            "validate".into(),
            "--manifest".into(),
            manifest.clone().into(),
            tmp.path().into(),
        ],
        vec!["pool".into(), "check".into(), fifo.clone().into()],
        vec![
            "upload".into(),
            fifo.clone().into(),
            "--to".into(),
            "acct".into(),
        ],
    ];
    for args in cases {
        let started = Instant::now();
        let mut child = imgforge()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a hang is killed and reported, not waited for.
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{args:?} hung");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            matches!(status.code(), Some(1) | Some(2)),
            "{args:?}: {status:?}\n{err}"
        );
        assert!(
            err.contains("not a regular file"),
            "{args:?}: no clear message:\n{err}"
        );
    }
}

/// A blob endpoint that says "page blob, 1 GiB" and then answers every range
/// request with an endless body; stops by itself after 20 s.
fn endless_blob_server() -> SocketAddr {
    fn answer(mut conn: std::net::TcpStream, head: String) {
        if head.starts_with("HEAD") {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1073742336\r\nx-ms-blob-type: PageBlob\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let _ = conn.write_all(
            b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        let chunk = vec![b'x'; 64 * 1024];
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && conn.write_all(&frame).is_ok() {}
    }
    serve(20, answer)
}

#[test]
fn a_server_that_ignores_the_range_is_cut_off_at_what_was_asked() {
    let server = endless_blob_server();
    let started = Instant::now();
    let (r, kib) = run_measured(
        imgforge()
            .env_remove("ARM_CLIENT_ID")
            .args(["validate", "--json", "--manifest"])
            .arg(repo().join("contrib/legacy/gpu-ubuntu1604.toml"))
            .arg(format!("http://{server}/acct/images/d.vhd")),
    );
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Before the bounded reads: 6 GB in ten seconds.
    assert!(kib < 96 * 1024, "peak RSS {kib} KiB");
    assert!(r.all().contains("were asked for"), "{}", r.all());
}

#[test]
fn a_page_list_past_the_blobs_end_is_refused_before_anything_is_copied() {
    // A 1 MiB page blob whose page list claims 0..2^63 (2^41 chunks of 4 MiB).
    let server = serve(20, |mut conn, head| {
        let reply = if head.starts_with("HEAD") {
            "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nx-ms-blob-type: PageBlob\r\nETag: \"0x1\"\r\nConnection: close\r\n\r\n".to_string()
        } else if head.contains("comp=pagelist") {
            let xml = format!(
                "<?xml version=\"1.0\"?><PageList><PageRange><Start>0</Start><End>{}</End></PageRange></PageList>",
                (1u64 << 63) - 1
            );
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            )
        } else {
            "HTTP/1.1 500 Unexpected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        };
        let _ = conn.write_all(reply.as_bytes());
    });
    let started = Instant::now();
    let (r, kib) = run_measured(
        imgforge()
            .env_remove("ARM_CLIENT_ID")
            .env("IMGFORGE_STORAGE_KEY_DEST", "a2V5LWJ5dGVzLWZvci10ZXN0cw==")
            .args(["replicate", "--no-validate", "--to", "dest", "--source"])
            .arg(format!("http://{server}/acct/images/d.vhd"))
            .arg("--blob-endpoint")
            .arg(format!("http://{server}/{{account}}")),
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(started.elapsed() < Duration::from_secs(10));
    // 2⁴¹ chunks are never planned.
    assert!(kib < 96 * 1024, "peak RSS {kib} KiB");
    assert!(r.stderr.contains("claims bytes"), "{}", r.stderr);
}

#[test]
fn a_user_script_that_is_the_environment_is_refused_not_rendered() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.toml");
    write(
        &m,
        &format!("{MINIMAL}\n[provision]\nscripts = [\"/proc/self/environ\"]\n"),
    );
    let out = tmp.path().join("out");
    // Refused first because it is outside the manifest's directory…
    let r = run(imgforge().arg("render").arg(&m).arg("-o").arg(&out));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("is outside the manifest's directory"),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "nothing half-written");
    // …and, allowed from outside, still refused for what it would render.
    write(
        &m,
        &format!(
            "{MINIMAL}\n[provision]\nscripts = [\"/proc/self/environ\"]\nallow_outside = true\n"
        ),
    );
    let r = run(imgforge().arg("render").arg(&m).arg("-o").arg(&out));
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("would contain a secret"), "{}", r.stderr);
    assert!(!r.all().contains(CANARY));
    assert!(!out.exists(), "nothing half-written");
}

#[test]
fn user_scripts_from_outside_the_manifests_directory_need_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("project");
    write(&dir.join("setup.sh"), "#!/bin/sh\necho inside\n");
    write(
        &tmp.path().join("elsewhere.sh"),
        "#!/bin/sh\necho outside\n",
    );
    // A link in the directory to a file outside it counts as outside.
    std::os::unix::fs::symlink(tmp.path().join("elsewhere.sh"), dir.join("linked.sh")).unwrap();
    let m = dir.join("m.toml");
    for (scripts, allow, ok) in [
        ("[\"setup.sh\"]", false, true),
        ("[\"../elsewhere.sh\"]", false, false),
        ("[\"linked.sh\"]", false, false),
        ("[\"../elsewhere.sh\"]", true, true),
    ] {
        write(
            &m,
            &format!("{MINIMAL}\n[provision]\nscripts = {scripts}\nallow_outside = {allow}\n"),
        );
        let r = run(imgforge().arg("plan").arg(&m));
        if ok {
            assert_eq!(r.code, 0, "{scripts} {allow}: {}", r.all());
        } else {
            assert_eq!(r.code, 2, "{scripts} {allow}: {}", r.all());
            assert!(r.stderr.contains("provision.scripts.0"), "{}", r.stderr);
            assert!(r.stderr.contains("allow_outside = true"), "{}", r.stderr);
        }
    }
}

#[test]
fn template_overrides_that_recurse_or_point_outside_are_refused_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let m = repo().join("contrib/base-ubuntu2204.toml");
    let render = |dir: &std::path::Path| {
        let r = run(imgforge()
            .arg("render")
            .arg(&m)
            .arg("-o")
            .arg(tmp.path().join("out"))
            .arg("--force")
            .arg("--templates")
            .arg(dir));
        if tmp.path().join("out").exists() {
            assert_no_canary(&tmp.path().join("out"));
        }
        r
    };
    let case = |name: &str, files: &[(&str, &str)]| {
        let dir = tmp.path().join(name);
        for (f, text) in files {
            write(&dir.join(f), text);
        }
        dir
    };
    // Each of these overflowed Tera's stack (the process aborted) before.
    for (name, files, says) in [
        (
            "self-include",
            vec![(
                "scripts/10-ssh.sh.tera",
                "{% include \"scripts/10-ssh.sh.tera\" %}\n",
            )],
            "include/import/extends never ends: scripts/10-ssh.sh.tera -> scripts/10-ssh.sh.tera",
        ),
        (
            "mutual-include",
            vec![
                (
                    "scripts/10-ssh.sh.tera",
                    "{% include \"scripts/_common.sh.tera\" %}\n",
                ),
                (
                    "scripts/_common.sh.tera",
                    "{%- include \"scripts/10-ssh.sh.tera\" -%}\n",
                ),
            ],
            "never ends: scripts/_common.sh.tera -> scripts/10-ssh.sh.tera -> scripts/_common.sh.tera",
        ),
        (
            "recursive-macro",
            vec![(
                "scripts/10-ssh.sh.tera",
                "{% macro f(n) %}{{ self::f(n=n) }}{% endmacro f %}{{ self::f(n=1) }}\n",
            )],
            "macro recursion never ends: scripts/10-ssh.sh.tera::f -> scripts/10-ssh.sh.tera::f",
        ),
        (
            "imported-macros",
            vec![
                (
                    "scripts/_common.sh.tera",
                    "{% import \"scripts/10-ssh.sh.tera\" as ssh %}{% macro a() %}{{ ssh::b() }}{% endmacro a %}\n",
                ),
                (
                    "scripts/10-ssh.sh.tera",
                    "{% macro b() %}{{ common::a() }}{% endmacro b %}{% import \"scripts/_common.sh.tera\" as common %}\n",
                ),
            ],
            "never ends",
        ),
    ] {
        let dir = case(name, &files);
        let r = render(&dir);
        assert_eq!(r.code, 2, "{name}: {}", r.all());
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
        assert!(!r.stderr.contains("overflowed"), "{name}");
    }
    // A symbolic link loop in the directory, and a link to the environment.
    let dir = case("links", &[]);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("scripts/loop")).unwrap();
    let r = render(&dir);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("symbolic link to a directory"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(dir.join("scripts/loop")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", dir.join("scripts/10-ssh.sh.tera")).unwrap();
    let r = render(&dir);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("outside the template directory"),
        "{}",
        r.stderr
    );
    assert!(!r.all().contains(CANARY));
    // A link inside the directory (to a hidden folder the walk skips), and a
    // macro that is not recursive, still render.
    std::fs::remove_file(dir.join("scripts/10-ssh.sh.tera")).unwrap();
    write(
        &dir.join(".shared/ssh.tera"),
        "#!/bin/sh\n{% macro hello(who) %}echo hello {{ who }}{% endmacro hello %}{{ self::hello(who=\"batch\") }}\n",
    );
    std::os::unix::fs::symlink("../.shared/ssh.tera", dir.join("scripts/10-ssh.sh.tera")).unwrap();
    let r = render(&dir);
    assert_eq!(r.code, 0, "{}", r.all());
    let out = std::fs::read_to_string(tmp.path().join("out/scripts/10-ssh.sh")).unwrap();
    assert!(out.contains("echo hello batch"), "{out}");
}

/// One byte of the fragmented source below: valid pages hold their page
/// number's pattern, the gaps read as zeros (as unwritten pages do).
fn fragment_byte(offset: u64) -> u8 {
    if offset < 100_000 * 2048 && offset % 2048 < 512 {
        (offset / 512 % 251) as u8 + 1
    } else {
        0
    }
}

#[test]
fn a_page_list_of_a_hundred_thousand_single_pages_is_copied_in_spans() {
    // A 200 MiB page blob whose page list is 10⁵ single 512-byte pages, one
    // every 2 KiB, in pages of 10,000 ranges (Azure's limit per response).
    const LEN: u64 = 200 * 1024 * 1024;
    let server = serve(60, |mut conn, head| {
        let reply: Vec<u8> = if head.starts_with("HEAD") {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\nx-ms-blob-type: PageBlob\r\nETag: \"0x2\"\r\nConnection: close\r\n\r\n").into_bytes()
        } else if head.contains("comp=pagelist") {
            let page: u64 = head
                .split("marker=")
                .nth(1)
                .and_then(|m| m.split(['&', ' ']).next()?.parse().ok())
                .unwrap_or(0);
            let mut xml = String::from("<?xml version=\"1.0\"?><PageList>");
            for i in page * 10_000..(page + 1) * 10_000 {
                xml.push_str(&format!(
                    "<PageRange><Start>{}</Start><End>{}</End></PageRange>",
                    i * 2048,
                    i * 2048 + 511
                ));
            }
            if page + 1 < 10 {
                xml.push_str(&format!("<NextMarker>{}</NextMarker>", page + 1));
            }
            xml.push_str("</PageList>");
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            )
            .into_bytes()
        } else if let Some(range) = head
            .lines()
            .find_map(|l| l.strip_prefix("x-ms-range: bytes="))
        {
            let (a, b) = range.trim().split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            let body: Vec<u8> = (a..=b).map(fragment_byte).collect();
            let mut r = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend(body);
            r
        } else {
            b"HTTP/1.1 500 Unexpected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        };
        let _ = conn.write_all(&reply);
    });
    let az = Azurite::start(&["dest"]);
    let mut cmd = imgforge();
    az.env(&mut cmd);
    let started = Instant::now();
    let r = run(cmd
        .env_remove("ARM_CLIENT_ID")
        .args([
            "replicate",
            "--json",
            "--no-validate",
            "--to",
            "dest",
            "--source",
        ])
        .arg(format!("http://{server}/acct/images/d.vhd")));
    let took = started.elapsed();
    assert_eq!(r.code, 0, "{}", r.all());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let requests = doc["result"]["requests"].as_u64().unwrap();
    let copy = &doc["result"]["copies"][0];
    eprintln!(
        "10⁵ single pages: {requests} requests, {} chunks, {:.1} s",
        copy["chunks_total"],
        took.as_secs_f64()
    );
    // Before: a read and a write per range, 2 × 10⁵ requests. Now the ranges,
    // 1.5 KiB apart, are one span of 195.3 MiB: 49 chunks of at most 4 MiB.
    assert_eq!(copy["chunks_total"], 49, "{doc:#}");
    assert!(requests < 400, "{requests} requests");
    assert_eq!(copy["verified"], true);
    // The copy holds the same bytes: the pattern where the source had
    // pages, zeros in the bridged gaps (now valid pages of zeros).
    let url = az.url("dest", "images", "d.vhd");
    let tmp = tempfile::tempdir().unwrap();
    let got = az.download(&url, &tmp.path().join("d.vhd"));
    assert_eq!(got.len() as u64, LEN);
    let differ = (0..LEN)
        .step_by(509)
        .find(|&o| got[o as usize] != fragment_byte(o));
    assert_eq!(differ, None);
    assert_eq!(az.ranges(&url), vec![(0, 99_999 * 2048 + 512)]);
}

/// A URL with `.blob.` in a host that is not Azure's: the account's key is
/// never sent there (it used to be, SharedKey-signed, to whatever host the
/// URL named). The refusal comes before any connection: the host does not
/// even resolve here, and the error is not a DNS one.
#[test]
fn a_storage_key_is_never_sent_to_a_lookalike_host() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.toml");
    write(&m, MINIMAL);
    for url in [
        "https://imgcopy0.blob.attacker.example/images/x.vhd",
        "https://imgcopy0.blob.core.windows.net.attacker.example/images/x.vhd",
    ] {
        let r = run(imgforge()
            .env(
                "IMGFORGE_STORAGE_KEY_IMGCOPY0",
                "a2V5IGZvciBhIGxvb2stYWxpa2UgaG9zdCB0ZXN0IQ==",
            )
            .arg("validate")
            .arg(url)
            .arg("--manifest")
            .arg(&m));
        assert_ne!(r.code, 0, "{}", r.all());
        assert!(
            r.all().contains("no key or token is sent there"),
            "{url}: {}",
            r.all()
        );
        assert!(!r.all().contains("a2V5IGZvciBhIGxvb2st"), "{}", r.all());
    }
}

/// A Resource Manager that never ends the storage-account list (each page
/// links to the next, or to itself): the list stops at its page cap with an
/// error, instead of running until killed with a growing RSS.
#[test]
fn a_storage_account_list_that_never_ends_is_cut_at_its_page_cap() {
    for self_link in [false, true] {
        let pages = Arc::new(AtomicUsize::new(0));
        let counter = pages.clone();
        let addr = Arc::new(std::sync::OnceLock::<SocketAddr>::new());
        let me = addr.clone();
        let served = serve(60, move |mut conn, head| {
            let body = if head.starts_with("POST ") {
                r#"{"token_type":"Bearer","expires_in":3600,"access_token":"t0k3n"}"#.to_string()
            } else {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let next = if self_link {
                    head.split_whitespace().nth(1).unwrap_or("/").to_string()
                } else {
                    format!(
                        "/subscriptions/s/providers/Microsoft.Storage/storageAccounts?page={}",
                        n + 1
                    )
                };
                format!(
                    r#"{{"value":[],"nextLink":"http://{}{next}"}}"#,
                    me.get().unwrap()
                )
            };
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        });
        addr.set(served).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("m.toml");
        write(&m, MINIMAL);
        let endpoint = format!("http://{served}");
        let started = Instant::now();
        let r = run(imgforge()
            .env("IMGFORGE_ARM_ENDPOINT", &endpoint)
            .env("AZURE_AUTHORITY_HOST", &endpoint)
            .args([
                "replicate",
                "--no-validate",
                "--region",
                "westus2",
                "--source",
                "https://build.blob.core.windows.net/c/x.vhd",
                "--to",
                "imgcopy0",
            ])
            .arg(&m));
        assert_ne!(r.code, 0, "{}", r.all());
        assert!(r.stderr.contains("a list that never ends"), "{}", r.stderr);
        let n = pages.load(Ordering::SeqCst);
        assert!(n <= 100, "{n} pages asked for");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }
}

/// A storage server that drips its answer one byte a second: each byte
/// restarts an idle timeout, so only a bound on the whole command ends it.
/// `validate --timeout 4` ends in about 4 s with a failure that says so,
/// and judges nothing.
#[test]
fn a_server_that_drips_cannot_stretch_validate_past_its_timeout() {
    let served = serve(60, |mut conn, _head| {
        let reply =
            b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nx-ms-blob-type: PageBlob\r\n\r\n";
        for b in reply.iter().cycle().take(200) {
            if conn.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.toml");
    write(&m, MINIMAL);
    let started = Instant::now();
    let r = run(imgforge()
        .env_remove("ARM_CLIENT_ID")
        .arg("validate")
        .arg(format!("http://{served}/imgcopy0/images/x.vhd"))
        .args(["--timeout", "4", "--manifest"])
        .arg(&m));
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("no result within 4 s"), "{}", r.stderr);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// Entra, Resource Manager and Batch all drip: `pool check --online` and
/// `skus --online` end at their --timeout, whatever each request's own
/// deadline would allow.
#[test]
fn online_checks_that_meet_a_dripping_service_end_at_their_timeout() {
    let served = serve(60, |mut conn, _head| {
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
            .iter()
            .cycle()
            .take(200)
        {
            if conn.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let endpoint = format!("http://{served}");
    for args in [
        vec![
            "pool".to_string(),
            "check".into(),
            repo()
                .join("tests/fixtures/pool/good-arm.json")
                .display()
                .to_string(),
            "--online".into(),
        ],
        vec!["skus".into(), "--online".into()],
    ] {
        let started = Instant::now();
        let r = run(imgforge()
            .env("AZURE_AUTHORITY_HOST", &endpoint)
            .env("IMGFORGE_ARM_ENDPOINT", &endpoint)
            .env("IMGFORGE_BATCH_URL", &endpoint)
            .args(&args)
            .args(["--timeout", "3"]));
        let took = started.elapsed();
        assert_eq!(r.code, 1, "{args:?}: {}", r.all());
        assert!(
            r.stderr.contains("no result within 3 s"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
    }
}
