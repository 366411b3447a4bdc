//! The measuring half of bench/cluster.sh (a cargo bench target without
//! the test harness: `cargo bench --bench cluster_harness`), on the
//! cluster harness of the tests: `fcm ls` and `fcm exec --json` (and the
//! streamed exec) through a forwarding host against the owning host,
//! alternating, BENCH_N times; then BENCH_CREATES creates through one host
//! onto three hosts of unequal memory, and where they landed. Writes a
//! markdown table to FCM_BENCH_OUT.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::cluster::Cluster;

/// Median and 95th percentile of `ms`.
fn p50_p95(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.95))
}

fn main() {
    if !common::e2e_ready() {
        std::process::exit(2);
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let creates: usize = std::env::var("BENCH_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let vm_mib: u64 = std::env::var("BENCH_VM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    // Memory for placement in the ratio 1:2:3, room for every VM.
    let unit = (vm_mib * creates as u64).div_ceil(3).max(vm_mib);
    let caps = [unit, 2 * unit, 3 * unit];
    let c = Cluster::start_live("clb", caps);
    c.ok(1, &["create", "--name", "bench", "--host", "h1", "--json"]);
    let time = |i: usize, args: &[&str]| {
        let t = Instant::now();
        c.ok(i, args);
        t.elapsed().as_secs_f64() * 1000.0
    };
    let exec = ["exec", "--json", "bench", "--", "true"];
    let stream = ["exec", "bench", "--", "true"];
    let ls = ["ls", "--json"];
    let (mut ls_fwd, mut ls_own, mut ex_fwd, mut ex_own) = (vec![], vec![], vec![], vec![]);
    let (mut st_fwd, mut st_own) = (vec![], vec![]);
    for _ in 0..n {
        ls_fwd.push(time(0, &ls));
        ls_own.push(time(1, &ls));
        ex_fwd.push(time(0, &exec));
        ex_own.push(time(1, &exec));
        st_fwd.push(time(0, &stream));
        st_own.push(time(1, &stream));
    }
    c.ok(1, &["destroy", "bench"]);
    let mut on = [0usize; 3];
    let mem = vm_mib.to_string();
    let t = Instant::now();
    for k in 0..creates {
        let v: serde_json::Value = serde_json::from_str(
            c.ok(
                0,
                &[
                    "create",
                    "--name",
                    &format!("p{k}"),
                    "--memory",
                    &mem,
                    "--no-wait",
                    "--json",
                ],
            )
            .trim(),
        )
        .expect("json");
        let h = v["host"].as_str().unwrap_or("h0");
        let i: usize = h.trim_start_matches('h').parse().unwrap_or(0);
        on[i] += 1;
    }
    let create_s = t.elapsed().as_secs_f64();
    for k in 0..creates {
        let _ = c.run_at(0, 0, &["destroy", &format!("p{k}")]);
    }
    let row = |what: &str, fwd: Vec<f64>, own: Vec<f64>| {
        let (f50, f95) = p50_p95(fwd);
        let (o50, o95) = p50_p95(own);
        format!(
            "| {what} p50 | {o50:.1} | {f50:.1} | {:.2} |\n| {what} p95 | {o95:.1} | {f95:.1} | {:.2} |\n",
            f50 / o50,
            f95 / o95
        )
    };
    let mut md = String::new();
    md.push_str("| wall time, ms | on the owning host | through another host | ratio |\n|---|---:|---:|---:|\n");
    md.push_str(&row("`fcm ls --json`", ls_fwd, ls_own));
    md.push_str(&row("`fcm exec --json vm -- true`", ex_fwd, ex_own));
    md.push_str(&row("`fcm exec vm -- true` (streamed)", st_fwd, st_own));
    md.push_str(&format!(
        "\nPlacement: {creates} creates of {vm_mib} MiB sent to h0, onto hosts of {} / {} / {} MiB (1:2:3), in {create_s:.1} s:\n\n| host | memory, MiB | VMs placed |\n|---|---:|---:|\n| h0 | {} | {} |\n| h1 | {} | {} |\n| h2 | {} | {} |\n",
        caps[0], caps[1], caps[2], caps[0], on[0], caps[1], on[1], caps[2], on[2]
    ));
    eprintln!("{md}");
    if let Ok(p) = std::env::var("FCM_BENCH_OUT") {
        std::fs::write(p, md).expect("bench out");
    }
}
