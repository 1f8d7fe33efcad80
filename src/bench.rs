//! `medsee bench …`: timings printed as a table and written as JSON. Peers (PyTorch and
//! onnxruntime running the reference LiteMedSAM) run in the same invocation when importable.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use clap::{Args, Subcommand};
use medsee::image::RgbImage;
use medsee::segment::read_f32;
use medsee::weights::convert::ModelPaths;
use medsee::{BoxSegmenter, Error, Result, Variant};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum Which {
    /// LiteMedSAM: image encode and prompt+decode latency, f32 and quantised, vs the reference.
    Sam(SamArgs),
}

#[derive(Args)]
pub struct SamArgs {
    /// Timed runs per stage (after one warm-up run).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "benches/results/sam.json")]
    json: PathBuf,
    /// Python interpreter with torch (and optionally onnxruntime) for the peer numbers.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the PyTorch / onnxruntime peers.
    #[arg(long)]
    no_peers: bool,
}

/// Median and range of a set of timings, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
struct Stats {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    runs: usize,
}

impl Stats {
    fn from_seconds(samples: &[f64]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|s| s * 1e3).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let n = ms.len();
        let median = if n % 2 == 1 { ms[n / 2] } else { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 };
        Self { median_ms: median, min_ms: ms[0], max_ms: ms[n - 1], runs: n }
    }

    fn cell(&self) -> String {
        format!("{:>9.1} ({:.1}–{:.1})", self.median_ms, self.min_ms, self.max_ms)
    }
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    f()?; // warm-up
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f()?;
        samples.push(started.elapsed().as_secs_f64());
    }
    Ok(Stats::from_seconds(&samples))
}

/// A deterministic 512×512 test image (smooth gradient with a bright disc).
fn test_image() -> RgbImage {
    let side = 512u32;
    let mut pixels = Vec::with_capacity((side * side * 3) as usize);
    for y in 0..side {
        for x in 0..side {
            let (dx, dy) = (x as f32 - 300.0, y as f32 - 220.0);
            let disc = if dx * dx + dy * dy < 80.0 * 80.0 { 120 } else { 0 };
            let v = ((x + y) / 8) as u8 / 2 + disc;
            pixels.extend([v, v, v]);
        }
    }
    RgbImage::new(side, side, pixels).expect("valid test image")
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bench_variant(paths: &ModelPaths, variant: Variant, runs: usize) -> Result<(Stats, Stats)> {
    let segmenter = BoxSegmenter::load(&paths.converted, variant, Device::flex())?;
    let image = test_image();
    let encode = time_runs(runs, || {
        let embedding = segmenter.encode(&image);
        futures_lite::future::block_on(read_f32(embedding.tensor.slice([0..1, 0..1, 0..1, 0..1])))?;
        Ok(())
    })?;
    let embedding = segmenter.encode(&image);
    let model_box = Tensor::<1>::from_floats([150.0f32, 60.0, 200.0, 160.0].as_slice(), segmenter.device()).reshape([1, 4]);
    let decode = time_runs(runs, || {
        let output = segmenter.model().decode_boxes(embedding.tensor.clone(), model_box.clone(), None);
        futures_lite::future::block_on(read_f32(output.low_res_masks))?;
        Ok(())
    })?;
    Ok((encode, decode))
}

/// Runs `benches/peers/litemedsam_reference.py`; `None` (with a note) when the peers can't run.
fn run_peers(args: &SamArgs, paths: &ModelPaths, threads: usize) -> Option<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/litemedsam_reference.py");
    let output = Command::new(&args.python)
        .arg(&script)
        .args(["--runs", &args.runs.to_string(), "--threads", &threads.to_string()])
        .arg("--sources")
        .arg(&paths.sources)
        .output();
    match output {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout).ok(),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("bench: peers skipped ({})", err.lines().last().unwrap_or("failed"));
            None
        }
        Err(e) => {
            eprintln!("bench: peers skipped ({}: {e})", args.python);
            None
        }
    }
}

fn bench_sam(args: &SamArgs, paths: &ModelPaths, threads: usize) -> Result<()> {
    if args.runs == 0 {
        return Err(Error::Other("--runs must be at least 1".into()));
    }
    let mut rows: Vec<(String, Stats, Stats)> = Vec::new();
    for variant in Variant::ALL {
        eprintln!("bench: medsee {variant} ({} runs per stage) …", args.runs);
        let (encode, decode) = bench_variant(paths, variant, args.runs)?;
        rows.push((format!("medsee burn-flex {variant}"), encode, decode));
    }
    let peers = if args.no_peers { None } else { eprintln!("bench: peers …"); run_peers(args, paths, threads) };
    if let Some(peers) = &peers {
        for name in ["pytorch", "onnxruntime"] {
            let stage = |s: &str| -> Option<Stats> {
                let v: Vec<f64> = serde_json::from_value(peers.get(name)?.get(s)?.clone()).ok()?;
                (!v.is_empty()).then(|| Stats::from_seconds(&v))
            };
            if let (Some(e), Some(d)) = (stage("encode"), stage("decode")) {
                rows.push((format!("{name} {} f32", peers["versions"][name].as_str().unwrap_or("")), e, d));
            }
        }
    }

    let best_peer = |pick: fn(&(String, Stats, Stats)) -> f64| {
        rows.iter().filter(|r| !r.0.starts_with("medsee")).map(pick).fold(f64::INFINITY, f64::min)
    };
    let best_encode = best_peer(|r| r.1.median_ms);
    let best_decode = best_peer(|r| r.2.median_ms);
    println!("\nLiteMedSAM, {threads} threads, median (min–max) ms over {} runs; ratio = best peer / this (≥ 1 is faster)", args.runs);
    println!("{:<34} {:>24} {:>7} {:>24} {:>7}", "engine", "image encode", "ratio", "prompt + decode", "ratio");
    for (name, e, d) in &rows {
        let ratio = |best: f64, own: f64| if best.is_finite() { format!("{:.2}", best / own) } else { "-".into() };
        println!("{:<34} {:>24} {:>7} {:>24} {:>7}", name, e.cell(), ratio(best_encode, e.median_ms), d.cell(), ratio(best_decode, d.median_ms));
    }
    let rss = peak_rss_mb();
    if let Some(mb) = rss {
        println!("peak RSS of this process: {mb:.0} MB");
    }

    let report = json!({
        "benchmark": "sam",
        "threads": threads,
        "runs": args.runs,
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "os": std::env::consts::OS, "arch": std::env::consts::ARCH },
        "rows": rows.iter().map(|(name, e, d)| json!({ "engine": name, "encode": e, "decode": d })).collect::<Vec<_>>(),
        "peak_rss_mb": rss,
        "peers_raw": peers,
    });
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report).expect("json")).map_err(|e| Error::io(&args.json, e))?;
    println!("results → {}", args.json.display());
    Ok(())
}

pub fn run(which: Which, paths: &ModelPaths, threads: usize) -> Result<()> {
    match which {
        Which::Sam(args) => bench_sam(&args, paths, threads),
    }
}
