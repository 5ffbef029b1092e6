//! `weft-cni-bench`: ADD/CHECK/DEL latency of `weft` against the reference
//! `bridge` + `host-local` plugins (the anchor), interleaved in one run on the
//! same machine, sequentially and at several parallelisms. Reports p50/p99,
//! failures, leaks and the weft/reference ratios.
//!
//! Everything happens in throwaway network namespaces: a "node" netns where
//! both plugins put their bridges, and one netns per pod. Run as root:
//!
//! ```text
//! weft-cni-bench --weft-bin target/release --ref-bin /usr/lib/cni \
//!     --rounds 10 --seq 20 --parallel 8,32 --out BENCHMARKS-cni.json
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// One plugin under test.
struct Subject {
    label: &'static str,
    /// The plugin binary that gets ADD/CHECK/DEL.
    plugin: PathBuf,
    /// CNI_PATH for it (where its IPAM plugin is found).
    cni_path: String,
    conf: Value,
    bridge: &'static str,
    /// Counts the allocations currently held.
    held: Box<dyn Fn() -> usize + Send + Sync>,
}

#[derive(Default)]
struct Samples {
    ms: BTreeMap<String, Vec<f64>>,
    failures: BTreeMap<String, usize>,
    first_error: Option<String>,
}

impl Samples {
    fn record(&mut self, key: &str, ms: f64, ok: bool, err: impl FnOnce() -> String) {
        self.ms.entry(key.to_string()).or_default().push(ms);
        if !ok {
            *self.failures.entry(key.to_string()).or_default() += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!("{key}: {}", err()));
            }
        }
    }
}

struct Args {
    weft_bin: PathBuf,
    ref_bin: PathBuf,
    rounds: usize,
    seq: usize,
    parallel: Vec<usize>,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        weft_bin: PathBuf::from("target/release"),
        ref_bin: PathBuf::from("/usr/lib/cni"),
        rounds: 10,
        seq: 20,
        parallel: vec![8, 32],
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--weft-bin" => a.weft_bin = v()?.into(),
            "--ref-bin" => a.ref_bin = v()?.into(),
            "--rounds" => a.rounds = v()?.parse()?,
            "--seq" => a.seq = v()?.parse()?,
            "--parallel" => a.parallel = v()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--out" => a.out = Some(v()?.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    ensure!(nix::unistd::Uid::effective().is_root(), "run as root");
    for p in [args.weft_bin.join("weft"), args.weft_bin.join("weft-ipam")] {
        ensure!(p.is_file(), "{} missing (cargo build --release)", p.display());
    }
    for p in ["bridge", "host-local"] {
        ensure!(
            args.ref_bin.join(p).is_file(),
            "{} missing (apt-get install containernetworking-plugins)",
            args.ref_bin.join(p).display()
        );
    }
    let tag = format!("wb{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("weft-bench-{tag}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let node = format!("{tag}-node");
    let max_pods = args.parallel.iter().copied().chain([args.seq]).max().unwrap_or(1);
    let pods: Vec<String> = (0..max_pods).map(|i| format!("{tag}-p{i}")).collect();
    let cleanup = Cleanup {
        netns: std::iter::once(node.clone()).chain(pods.iter().cloned()).collect(),
        dir: dir.clone(),
    };
    for n in &cleanup.netns {
        run(&["ip", "netns", "add", n])?;
    }
    // This process moves into the node netns: plugins it starts are born
    // there, with no `ip netns exec` in the timed path.
    let ns = fs::File::open(format!("/var/run/netns/{node}"))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("enter node netns")?;
    run(&["ip", "link", "set", "lo", "up"])?;

    let subjects = subjects(&args, &dir)?;
    let mut samples = Samples::default();
    for round in 0..args.rounds {
        // Alternate who goes first, so neither always meets a warm cache.
        let order: Vec<&Subject> = if round % 2 == 0 {
            subjects.iter().collect()
        } else {
            subjects.iter().rev().collect()
        };
        for s in &order {
            batch(s, &pods[..args.seq], 1, &mut samples);
        }
        for &p in &args.parallel {
            for s in &order {
                batch(s, &pods[..p], p, &mut samples);
            }
        }
        eprint!(".");
    }
    eprintln!();
    let leaks: BTreeMap<&str, (usize, usize)> = subjects
        .iter()
        .map(|s| (s.label, (bridge_ports(s.bridge), (s.held)())))
        .collect();
    let report = report(&args, &samples, &leaks);
    println!("{report}");
    if let Some(first) = &samples.first_error {
        eprintln!("first failure: {first}");
    }
    if let Some(out) = &args.out {
        fs::write(out, serde_json::to_string_pretty(&json_report(&samples, &leaks))?)?;
    }
    drop(cleanup);
    let failures: usize = samples.failures.values().sum();
    let leaked: usize = leaks.values().map(|(a, b)| a + b).sum();
    ensure!(
        failures == 0 && leaked == 0,
        "{failures} failures, {leaked} leaked objects"
    );
    Ok(())
}

fn subjects(args: &Args, dir: &Path) -> Result<Vec<Subject>> {
    let weft_data = dir.join("weft-ipam");
    let ref_data = dir.join("host-local");
    let weft_conf = json!({
        "cniVersion": "1.0.0", "name": "benchnet", "type": "weft",
        "bridge": "weft0", "mtu": 1420, "hairpinMode": true,
        "logFile": dir.join("weft.log"),
        "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.90.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": weft_data}
    });
    // The same shape for the anchor: bridge with gateway, hairpin, MTU,
    // host-local with one /24 and a default route.
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": "benchnet", "type": "bridge",
        "bridge": "refbr0", "isGateway": true, "mtu": 1420, "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.91.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ref_data}
    });
    let weft_ipam = weft_ipam::Ipam::new(
        serde_json::from_value::<weft_ipam::IpamConf>(weft_conf["ipam"].clone())?.plan()?,
        "benchnet",
    )?;
    let rd = ref_data.join("benchnet");
    Ok(vec![
        Subject {
            label: "weft",
            plugin: args.weft_bin.join("weft"),
            cni_path: args.weft_bin.display().to_string(),
            conf: weft_conf,
            bridge: "weft0",
            held: Box::new(move || weft_ipam.allocations().map(|a| a.len()).unwrap_or(usize::MAX)),
        },
        Subject {
            label: "reference",
            plugin: args.ref_bin.join("bridge"),
            cni_path: args.ref_bin.display().to_string(),
            conf: ref_conf,
            bridge: "refbr0",
            held: Box::new(move || {
                fs::read_dir(&rd)
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .filter(|e| e.file_name().to_string_lossy().parse::<std::net::IpAddr>().is_ok())
                            .count()
                    })
                    .unwrap_or(0)
            }),
        },
    ])
}

/// ADD every pod (p at a time), CHECK every pod, DEL every pod.
fn batch(s: &Subject, pods: &[String], p: usize, out: &mut Samples) {
    let mode = if p == 1 { "seq".to_string() } else { format!("par{p}") };
    let mut results: Vec<Option<Value>> = vec![None; pods.len()];
    for verb in ["ADD", "CHECK", "DEL"] {
        let key = format!("{}/{verb}/{mode}", s.label);
        for chunk in (0..pods.len()).collect::<Vec<_>>().chunks(p) {
            let outs: Vec<(usize, f64, Result<Option<Value>, String>)> = std::thread::scope(|sc| {
                let hs: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        let conf = match (verb, &results[i]) {
                            ("ADD", _) | (_, None) => s.conf.clone(),
                            (_, Some(prev)) => {
                                let mut c = s.conf.clone();
                                c["prevResult"] = prev.clone();
                                c
                            }
                        };
                        let pod = &pods[i];
                        sc.spawn(move || {
                            let t = Instant::now();
                            let r = invoke(s, verb, &format!("c{i}"), pod, &conf);
                            (i, t.elapsed().as_secs_f64() * 1000.0, r)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("worker")).collect()
            });
            for (i, ms, r) in outs {
                let ok = r.is_ok();
                out.record(&key, ms, ok, || r.clone().err().unwrap_or_default());
                if let (Ok(Some(v)), "ADD") = (r, verb) {
                    results[i] = Some(v);
                }
            }
        }
    }
}

fn invoke(s: &Subject, verb: &str, cid: &str, pod: &str, conf: &Value) -> Result<Option<Value>, String> {
    let mut child = Command::new(&s.plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_PATH", &s.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(format!("{} {}", text.trim(), String::from_utf8_lossy(&o.stderr).trim()));
    }
    Ok(serde_json::from_str(&text).ok())
}

/// Links still attached to `bridge` (leaked veths).
fn bridge_ports(bridge: &str) -> usize {
    Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx]
}

fn modes(args: &Args) -> Vec<String> {
    std::iter::once("seq".to_string())
        .chain(args.parallel.iter().map(|p| format!("par{p}")))
        .collect()
}

fn report(args: &Args, s: &Samples, leaks: &BTreeMap<&str, (usize, usize)>) -> String {
    let mut r = String::new();
    r += "| op | mode | n | weft p50 ms | ref p50 ms | p50 ratio | weft p99 ms | ref p99 ms | p99 ratio | failures weft/ref |\n";
    r += "|---|---|---|---|---|---|---|---|---|---|\n";
    for verb in ["ADD", "CHECK", "DEL"] {
        for mode in modes(args) {
            let w = s.ms.get(&format!("weft/{verb}/{mode}")).cloned().unwrap_or_default();
            let f =
                s.ms.get(&format!("reference/{verb}/{mode}"))
                    .cloned()
                    .unwrap_or_default();
            let fails = |l: &str| s.failures.get(&format!("{l}/{verb}/{mode}")).copied().unwrap_or(0);
            r += &format!(
                "| {verb} | {mode} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {}/{} |\n",
                w.len(),
                pct(&w, 50.0),
                pct(&f, 50.0),
                pct(&w, 50.0) / pct(&f, 50.0),
                pct(&w, 99.0),
                pct(&f, 99.0),
                pct(&w, 99.0) / pct(&f, 99.0),
                fails("weft"),
                fails("reference"),
            );
        }
    }
    for (label, (ports, held)) in leaks {
        r += &format!("\nleaks after all DELs, {label}: {ports} bridge ports, {held} allocations");
    }
    r
}

fn json_report(s: &Samples, leaks: &BTreeMap<&str, (usize, usize)>) -> Value {
    let ops: BTreeMap<&String, Value> =
        s.ms.iter()
            .map(|(k, v)| {
                (
                    k,
                    json!({"n": v.len(), "p50_ms": pct(v, 50.0), "p99_ms": pct(v, 99.0),
                       "failures": s.failures.get(k).copied().unwrap_or(0)}),
                )
            })
            .collect();
    json!({"ops": ops, "leaks": leaks.iter().map(|(k, (a, b))| (k.to_string(), json!({"bridge_ports": a, "allocations": b}))).collect::<BTreeMap<_, _>>()})
}

fn run(args: &[&str]) -> Result<()> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    ensure!(st.success(), "{args:?} failed");
    Ok(())
}

/// Removes the namespaces and files of the run, also when it fails.
struct Cleanup {
    netns: Vec<String>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
