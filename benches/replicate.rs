//! Fan-out benchmark on Azurite: one source page blob (1 GiB, 256 MiB of data
//! in 16 MiB runs) copied through imgforge (the client path,
//! `--no-server-copy`) to 1, 3, 10 and 50 destination accounts in one run,
//! against the naive copy of one destination (download everything, upload
//! every page) measured in the same run. Per run: wall time, wall per
//! destination, bytes through the client, requests, imgforge's peak RSS
//! (GNU time), and Azurite's CPU seconds (it is one Node.js process: its
//! throughput bounds the series).
//!
//!   cargo bench --bench replicate
//!   BENCH_VALID_MIB=64 BENCH_FANOUT_MAX=10 cargo bench --bench replicate   # a quicker series
//!   BENCH_MAX_REQUESTS=16 cargo bench --bench replicate                     # another global cap

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;

const MIB: u64 = 1024 * 1024;

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn main() {
    let valid_mib: u64 = std::env::var("BENCH_VALID_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let max: usize = std::env::var("BENCH_FANOUT_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let series: Vec<usize> = [1, 3, 10, 50].into_iter().filter(|n| *n <= max).collect();
    let tmp = tempfile::tempdir().unwrap();
    // Islands of 16 MiB (4 chunks each, so a sample reads half of them at
    // most), spread over 1 GiB.
    let n_islands = (valid_mib / 16).max(1);
    let stride = 1024 / n_islands;
    let islands: Vec<(u64, usize)> = (0..n_islands)
        .map(|i| (i * stride * MIB, 16 * MIB as usize))
        .collect();
    let vhd = sparse_vhd(tmp.path(), "fan", 1024, &islands);
    // Each row gets a fresh emulator holding the source and that row's copies
    // only (Azurite keeps blobs in memory: 50 copies of 256 MiB are 12.5 GiB).
    let fresh = |n: usize| {
        let names: Vec<String> = std::iter::once("src".to_string())
            .chain((0..n.max(1)).map(|i| format!("dst{i}")))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let az = Azurite::start_sized(&refs, valid_mib * (n as u64 + 2) + 1024);
        let r = run(az
            .env(&mut imgforge())
            .env_remove("ARM_CLIENT_ID")
            .args(["upload", "--json", "--to", "src", "--container", "build"])
            .arg(&vhd));
        assert_eq!(r.code, 0, "{}", r.all());
        let source = az.url("src", "build", "fan.vhd");
        (az, source)
    };

    // The naive baseline: one destination, download all then upload every page.
    let naive = {
        let (az, source) = fresh(1);
        let t = Instant::now();
        let whole = tmp.path().join("whole.vhd");
        // Through the SDK into a file, never into this process's memory: a
        // child's peak RSS starts from its parent's at fork.
        az.oracle(&["download", &source, whole.to_str().unwrap()]);
        az.oracle(&[
            "create",
            &az.url("dst0", "naive", "fan.vhd"),
            whole.to_str().unwrap(),
        ]);
        std::fs::remove_file(whole).unwrap();
        t.elapsed().as_secs_f64()
    };

    println!(
        "fan-out benchmark: 1 GiB page blob, {valid_mib} MiB valid, client path (--no-server-copy), Azurite 3.35.0, {} CPU(s)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "baseline: naive copy of one destination (SDK download of the whole blob, upload of its data): {naive:.2} s"
    );
    println!(
        "{:>5} {:>8} {:>9} {:>8} {:>9} {:>10} {:>9} {:>9} {:>11} {:>8}",
        "dests",
        "verify",
        "wall s",
        "s/dest",
        "vs naive",
        "MiB down",
        "MiB up",
        "requests",
        "peak RSS MiB",
        "azurite"
    );
    let mut peak_first = None;
    for &n in &series {
        for verify in ["readback", "sample"] {
            let (az, source) = fresh(n);
            let container = format!("fan{n}{verify}");
            let mut base = imgforge();
            let cmd = az.env(&mut base);
            cmd.env_remove("ARM_CLIENT_ID").args([
                "replicate",
                "--json",
                "--no-server-copy",
                "--verify",
                verify,
                "--source",
                &source,
                "--container",
                &container,
            ]);
            if let Ok(m) = std::env::var("BENCH_MAX_REQUESTS") {
                cmd.args(["--max-requests", &m]);
            }
            for i in 0..n {
                cmd.arg("--to").arg(format!("dst{i}"));
            }
            let az_cpu = cpu_s(az.pid());
            let t = Instant::now();
            let (r, rss_kib) = run_measured(cmd);
            let wall = t.elapsed().as_secs_f64();
            let az_cpu = cpu_s(az.pid()) - az_cpu;
            assert_eq!(r.code, 0, "{}", r.all());
            let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
            let res = &doc["result"];
            let down = res["bytes_downloaded"].as_u64().unwrap() as f64 / MIB as f64;
            let up = res["bytes_uploaded"].as_u64().unwrap() as f64 / MIB as f64;
            let rss = rss_kib as f64 / 1024.0;
            peak_first.get_or_insert(rss);
            println!(
                "{n:>5} {verify:>8} {wall:>9.2} {:>8.2} {:>8.2}x {down:>10.0} {up:>9.0} {:>9} {rss:>12.1} {az_cpu:>7.1}s",
                wall / n as f64,
                naive * n as f64 / wall,
                res["requests"],
            );
        }
    }
    println!(
        "client bytes goal (client path): down + up <= 1.05 x valid x (1 + N) with readback adding N x valid down; \
         'vs naive' = N naive copies' time / this run's time; peak RSS is the imgforge process's maximum \
         (GNU time: a child of this benchmark would start from the benchmark's own high-water RSS)"
    );
}
