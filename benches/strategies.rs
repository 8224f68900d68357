//! Replication benchmark on Azurite: a 1 GiB page blob holding 256 MiB of data
//! in 4 MiB islands, copied to 3 accounts by imgforge, against a naive copy
//! (download the whole blob, upload every page to each account) in the same run.
//!
//!   cargo bench --bench strategies

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use imgforge::azure::storage::{BlobRef, MAX_CHUNK, Storage};

const MIB: u64 = 1024 * 1024;

fn main() {
    let accounts = ["src", "dst1", "dst2", "dst3"];
    let az = Azurite::start(&accounts);
    let tmp = tempfile::tempdir().unwrap();
    // 64 islands of 4 MiB, one every 16 MiB: 256 MiB of data in 1 GiB.
    let islands: Vec<(u64, usize)> = (0..64).map(|i| (i * 16 * MIB, 4 * MIB as usize)).collect();
    let vhd = sparse_vhd(tmp.path(), "bench", 1024, &islands);

    let t = Instant::now();
    let r = run(az
        .env(&mut imgforge())
        .env_remove("ARM_CLIENT_ID")
        .args(["upload", "--json", "--to", "src", "--container", "build"])
        .arg(&vhd));
    assert_eq!(r.code, 0, "{}", r.all());
    let upload_s = t.elapsed().as_secs_f64();
    let source = az.url("src", "build", "bench.vhd");

    let mut rows = Vec::new();
    for (label, extra) in [
        ("imgforge (server-side when possible)", &[][..]),
        ("imgforge --no-server-copy", &["--no-server-copy"][..]),
    ] {
        let container = if extra.is_empty() { "auto" } else { "stream" };
        let t = Instant::now();
        let r = run(az
            .env(&mut imgforge())
            .env_remove("ARM_CLIENT_ID")
            .args([
                "replicate",
                "--json",
                "--source",
                &source,
                "--to",
                "dst1",
                "--to",
                "dst2",
                "--to",
                "dst3",
                "--container",
                container,
            ])
            .args(extra));
        let wall = t.elapsed().as_secs_f64();
        assert_eq!(r.code, 0, "{}", r.all());
        let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let res = &doc["result"];
        let moved =
            res["bytes_downloaded"].as_u64().unwrap() + res["bytes_uploaded"].as_u64().unwrap();
        let strategy = res["copies"][0]["strategy"].as_str().unwrap().to_string();
        rows.push((format!("{label} [{strategy}]"), wall, moved));
    }

    // The naive baseline, with the same client library, sequential.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let naive = rt.block_on(async {
        for (a, k) in &az.keys {
            // SAFETY: single-threaded at this point; the storage client reads these.
            unsafe {
                std::env::set_var(
                    format!("IMGFORGE_STORAGE_KEY_{}", a.to_ascii_uppercase()),
                    k,
                )
            };
        }
        let names: Vec<String> = accounts.iter().map(|s| s.to_string()).collect();
        let storage = Arc::new(Storage::new(&names).await.unwrap());
        let template = az.endpoint_template();
        let src = BlobRef::at(&template, "src", "build", "bench.vhd");
        let length = storage.properties(&src).await.unwrap().unwrap().length;
        let t = Instant::now();
        let mut whole = Vec::with_capacity(length as usize);
        let mut off = 0;
        while off < length {
            let end = (off + MAX_CHUNK).min(length);
            whole.extend_from_slice(&storage.get_range(&src, off..end).await.unwrap());
            off = end;
        }
        for d in ["dst1", "dst2", "dst3"] {
            let dst = BlobRef::at(&template, d, "naive", "bench.vhd");
            storage.create_container(&dst).await.unwrap();
            storage
                .create_page_blob(&dst, length, &Default::default())
                .await
                .unwrap();
            let mut off = 0;
            while off < length {
                let end = (off + MAX_CHUNK).min(length);
                storage
                    .put_page(
                        &dst,
                        off,
                        bytes::Bytes::copy_from_slice(&whole[off as usize..end as usize]),
                    )
                    .await
                    .unwrap();
                off = end;
            }
        }
        let c = &storage.counters;
        let moved = c.bytes_down.load(std::sync::atomic::Ordering::Relaxed)
            + c.bytes_up.load(std::sync::atomic::Ordering::Relaxed);
        (t.elapsed().as_secs_f64(), moved)
    });

    println!(
        "replication benchmark: 1 GiB page blob, 256 MiB valid in 64 x 4 MiB islands, 3 destination accounts, Azurite 3.35.0"
    );
    println!("setup: imgforge upload of the source took {upload_s:.2} s");
    println!(
        "{:<52} {:>9} {:>12} {:>10}",
        "method", "wall s", "MiB moved", "speed-up"
    );
    println!(
        "{:<52} {:>9.2} {:>12.0} {:>10}",
        "naive: download all, upload every page (baseline)",
        naive.0,
        naive.1 as f64 / MIB as f64,
        "1.00x"
    );
    for (label, wall, moved) in &rows {
        println!(
            "{label:<52} {wall:>9.2} {:>12.0} {:>9.2}x",
            *moved as f64 / MIB as f64,
            naive.0 / wall
        );
    }
    println!(
        "MiB moved = source reads + uploads + verification read-back, through imgforge; valid data per copy: 256 MiB of 1 GiB"
    );
}
