//! `medsee bench …`: timings printed as a table and written as JSON. Peers (PyTorch and
//! onnxruntime for LiteMedSAM, transformers for SmolLM2) run in the same invocation when their
//! Python packages are importable, and every stage shows the ratio best-peer / medsee.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Args, Subcommand};
use futures_lite::future::block_on;
use medsee::image::RgbImage;
use medsee::llm::chat::{chat_ids, Message, Role};
use medsee::llm::llama::KvCache;
use medsee::llm::TextModel;
use medsee::segment::read_f32;
use medsee::weights::convert::ModelPaths;
use medsee::{BoxSegmenter, Error, Result, Variant};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum Which {
    /// LiteMedSAM: image encode and prompt+decode latency, f32 and quantised, vs PyTorch and onnxruntime.
    Sam(BenchArgs),
    /// SmolLM2: prompt prefill and per-token decode latency, f32 and quantised, vs llama.cpp and transformers.
    Llm(BenchArgs),
    /// The reasoning segmenter: question → mask with the image encoded, the explanation, and
    /// end-to-end `ask` (encode + answer + explanation), f32 and quantised, with peak memory.
    Ask(BenchArgs),
    /// `sam`, `llm` and `ask` in one run, each writing its own JSON under benches/results/.
    All(BenchArgs),
    /// Soak: many questions over many images in one process; RSS and latency every 50 questions.
    Soak(SoakArgs),
}

#[derive(Args)]
pub struct SoakArgs {
    #[arg(long, default_value_t = 500)]
    questions: usize,
    #[arg(long, default_value_t = 20)]
    images: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "benches/results/soak.json")]
    json: PathBuf,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Timed runs per stage (after one warm-up run).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Where to write the JSON results (default benches/results/<benchmark>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Python interpreter with the peer packages (torch, onnxruntime, transformers).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the peers.
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
        format!("{:.1} ({:.1}–{:.1})", self.median_ms, self.min_ms, self.max_ms)
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

/// One benchmark's results: a row per engine, a column per stage.
struct Table {
    name: &'static str,
    title: String,
    stages: Vec<&'static str>,
    rows: Vec<(String, Vec<Stats>)>,
}

impl Table {
    /// Adds a row per `(peer, precision)` found in the peer script's output.
    fn add_peer_rows(&mut self, peers: &Value, names: &[(&str, &str)], keys: &[&str]) {
        for (name, precision) in names {
            let stats: Option<Vec<Stats>> = keys
                .iter()
                .map(|key| {
                    let v: Vec<f64> = serde_json::from_value(peers.get(name)?.get(key)?.clone()).ok()?;
                    (!v.is_empty()).then(|| Stats::from_seconds(&v))
                })
                .collect();
            if let Some(stats) = stats {
                let version = peers["versions"][name].as_str().unwrap_or("");
                self.rows.push((format!("{name} {version} {precision}"), stats));
            }
        }
    }

    fn print_and_save(&self, args: &BenchArgs, threads: usize, peers: Option<Value>) -> Result<()> {
        println!("\n{}", self.title);
        println!("median (min–max) ms over {} runs, {threads} threads; ratio = best peer / this (≥ 1: faster than every peer)", args.runs);
        print!("{:<34}", "engine");
        for stage in &self.stages {
            print!(" {:>28} {:>6}", stage, "ratio");
        }
        println!();
        let best: Vec<f64> = (0..self.stages.len())
            .map(|i| self.rows.iter().filter(|r| !r.0.starts_with("medsee")).map(|r| r.1[i].median_ms).fold(f64::INFINITY, f64::min))
            .collect();
        for (name, stats) in &self.rows {
            print!("{name:<34}");
            for (i, s) in stats.iter().enumerate() {
                let ratio = if best[i].is_finite() { format!("{:.2}", best[i] / s.median_ms) } else { "-".into() };
                print!(" {:>28} {:>6}", s.cell(), ratio);
            }
            println!();
        }
        let rss = peak_rss_mb();
        if let Some(mb) = rss {
            println!("peak RSS of this process: {mb:.0} MB");
        }
        let report = json!({
            "benchmark": self.name,
            "title": self.title,
            "threads": threads,
            "runs": args.runs,
            "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "os": std::env::consts::OS, "arch": std::env::consts::ARCH },
            "stages": self.stages,
            "rows": self.rows.iter().map(|(name, stats)| json!({ "engine": name, "stages": stats })).collect::<Vec<_>>(),
            "peak_rss_mb": rss,
            "peers_raw": peers,
        });
        let path = args.json.clone().unwrap_or_else(|| PathBuf::from(format!("benches/results/{}.json", self.name)));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json")).map_err(|e| Error::io(&path, e))?;
        println!("results → {}", path.display());
        Ok(())
    }
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs a peer script from benches/peers; `None` (with a note) when it can't run.
fn run_peer(args: &BenchArgs, script: &str, extra: &[String], paths: &ModelPaths, threads: usize) -> Option<Value> {
    if args.no_peers {
        return None;
    }
    eprintln!("bench: peers ({script}) …");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers").join(script);
    let output = Command::new(&args.python)
        .arg(&script)
        .args(["--runs", &args.runs.to_string(), "--threads", &threads.to_string()])
        .arg("--sources")
        .arg(&paths.sources)
        .args(extra)
        .output();
    match output {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout).ok(),
        Ok(out) => {
            eprintln!("bench: peers skipped ({})", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed"));
            None
        }
        Err(e) => {
            eprintln!("bench: peers skipped ({}: {e})", args.python);
            None
        }
    }
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

fn bench_sam(args: &BenchArgs, paths: &ModelPaths, threads: usize) -> Result<()> {
    let mut table = Table {
        name: "sam",
        title: "LiteMedSAM: image encode (256×256) and box prompt + mask decode".into(),
        stages: vec!["image encode", "prompt + decode"],
        rows: Vec::new(),
    };
    for variant in Variant::ALL {
        eprintln!("bench: medsee litemedsam {variant} …");
        let segmenter = BoxSegmenter::load(&paths.converted, variant, Device::flex())?;
        let image = test_image();
        let encode = time_runs(args.runs, || {
            let embedding = segmenter.encode(&image);
            block_on(read_f32(embedding.tensor.slice([0..1, 0..1, 0..1, 0..1])))?;
            Ok(())
        })?;
        let embedding = segmenter.encode(&image);
        let model_box = Tensor::<1>::from_floats([150.0f32, 60.0, 200.0, 160.0].as_slice(), segmenter.device()).reshape([1, 4]);
        let decode = time_runs(args.runs, || {
            let output = segmenter.model().decode_boxes(embedding.tensor.clone(), model_box.clone(), None);
            block_on(read_f32(output.low_res_masks))?;
            Ok(())
        })?;
        table.rows.push((format!("medsee burn-flex {variant}"), vec![encode, decode]));
    }
    let peers = run_peer(args, "litemedsam_reference.py", &[], paths, threads);
    if let Some(p) = &peers {
        table.add_peer_rows(p, &[("pytorch", "f32"), ("onnxruntime", "f32")], &["encode", "decode"]);
    }
    table.print_and_save(args, threads, peers)
}

const DECODE_TOKENS: usize = 64;
/// A chat prompt of about 100 tokens with the default system turn.
const LLM_PROMPT: &str = "I had a chest X-ray last week because of a cough that has lasted for more than a month. \
    The report mentions the lungs, the heart and the clavicles. Which part of this X-ray helps me breathe, \
    where exactly is it on the image, and what would a doctor look for there if they were worried about an infection?";

fn bench_llm(args: &BenchArgs, paths: &ModelPaths, threads: usize) -> Result<()> {
    let mut table = Table {
        name: "llm",
        title: String::new(),
        stages: vec!["prefill (whole prompt)", "decode (per token)"],
        rows: Vec::new(),
    };
    let mut prompt_ids = Vec::new();
    for variant in Variant::ALL {
        eprintln!("bench: medsee smollm2 {variant} …");
        let llm = TextModel::load(&paths.converted, variant, &Device::flex())?;
        prompt_ids = chat_ids(&llm.tokenizer, &[Message::new(Role::User, LLM_PROMPT)], true)?;
        let device = Device::flex();
        let input = || Tensor::<2, Int>::from_data(TensorData::new(prompt_ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, prompt_ids.len()]), &device);
        let prefill = time_runs(args.runs, || {
            let out = llm.model.forward_tokens(input(), &mut KvCache::new())?;
            block_on(read_f32(llm.model.last_logits(out.hidden)))?;
            Ok(())
        })?;
        // Per-token decode: greedy steps after the prompt, each with its logits read back.
        let mut per_token = Vec::new();
        for _ in 0..=args.runs {
            let mut cache = KvCache::new();
            let out = llm.model.forward_tokens(input(), &mut cache)?;
            let mut logits = llm.model.last_logits(out.hidden);
            let started = Instant::now();
            for _ in 0..DECODE_TOKENS {
                let row = block_on(read_f32(logits))?;
                let next = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0);
                logits = llm.model.next_token_logits(next, &mut cache)?;
            }
            per_token.push(started.elapsed().as_secs_f64() / DECODE_TOKENS as f64);
        }
        per_token.remove(0); // warm-up
        table.rows.push((format!("medsee burn-flex {variant}"), vec![prefill, Stats::from_seconds(&per_token)]));
    }
    table.title = format!("SmolLM2-135M: prefill of a {}-token chat prompt, then {DECODE_TOKENS} greedy decode steps", prompt_ids.len());
    let ids: Vec<String> = prompt_ids.iter().map(|t| t.to_string()).collect();
    let extra = ["--prompt-ids".to_string(), ids.join(","), "--decode-tokens".into(), DECODE_TOKENS.to_string()];
    let peers = run_peer(args, "smollm2_reference.py", &extra, paths, threads);
    if let Some(p) = &peers {
        table.add_peer_rows(p, &[("llama.cpp", "Q4_1"), ("transformers", "f32")], &["prefill", "decode"]);
    }
    for (name, stats) in &table.rows {
        eprintln!("{name}: {:.0} prompt tokens/s, {:.1} decode tokens/s", prompt_ids.len() as f64 / (stats[0].median_ms / 1e3), 1e3 / stats[1].median_ms);
    }
    table.print_and_save(args, threads, peers)
}

/// A real chest X-ray from the validation split when `../shared` is beside the checkout (the
/// question is about it), else the synthetic test image.
fn ask_image() -> RgbImage {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/medseg/images/jsrt_scr_chest_xray");
    let first = std::fs::read_dir(&dir).ok().and_then(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).min());
    first
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| medsee::image::decode_image(&bytes).ok())
        .unwrap_or_else(test_image)
}

const ASK_QUESTION: &str = "Which part helps me breathe?";

fn bench_ask(args: &BenchArgs, paths: &ModelPaths, threads: usize) -> Result<()> {
    let mut table = Table {
        name: "ask",
        title: format!("Reasoning segmentation: \"{ASK_QUESTION}\" on a chest X-ray (no peer: MediSee needs a 7B LLM)"),
        stages: vec!["question → mask", "explanation", "end-to-end ask"],
        rows: Vec::new(),
    };
    let image = ask_image();
    for variant in Variant::ALL {
        eprintln!("bench: medsee ask {variant} …");
        let reasoner = medsee::Reasoner::load(paths, variant, None)?;
        let encoded = reasoner.encode(&image);
        let answer = time_runs(args.runs, || block_on(reasoner.ask(&encoded, ASK_QUESTION)).map(|_| ()))?;
        let found = block_on(reasoner.ask(&encoded, ASK_QUESTION))?;
        let explain = time_runs(args.runs, || block_on(reasoner.explain(&found, |_| true)).map(|_| ()))?;
        let end_to_end = time_runs(args.runs.div_ceil(3), || {
            let encoded = reasoner.encode(&image);
            let answer = block_on(reasoner.ask(&encoded, ASK_QUESTION))?;
            block_on(reasoner.explain(&answer, |_| true)).map(|_| ())
        })?;
        table.rows.push((format!("medsee burn-flex {variant}"), vec![answer, explain, end_to_end]));
    }
    table.print_and_save(args, threads, None)
}

/// Current resident memory of this process, in MB.
fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

const SOAK_QUESTIONS: [&str; 6] = [
    "Which part helps me breathe?",
    "Where is the heart?",
    "Show me the growth the doctor worried about.",
    "Segment the liver.",
    "What lets me see?",
    "Where is the baby's head?",
];

fn bench_soak(args: &SoakArgs, paths: &ModelPaths) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/medseg/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|set| set.ok())
        .filter_map(|set| std::fs::read_dir(set.path()).ok()?.filter_map(|f| f.ok()).map(|f| f.path()).min())
        .collect();
    files.sort();
    files.truncate(args.images.max(1));
    let reasoner = medsee::Reasoner::load(paths, Variant::Quantized, None)?;
    let images = files
        .iter()
        .map(|f| Ok(reasoner.encode(&medsee::image::decode_image(&std::fs::read(f).map_err(|e| Error::io(f, e))?)?)))
        .collect::<Result<Vec<_>>>()?;
    println!("soak: {} questions over {} images (quantised weights), one process", args.questions, files.len());
    println!("{:>9} {:>9} {:>14}", "questions", "RSS MB", "ms/question");
    let mut samples = Vec::new();
    let mut window = Instant::now();
    for n in 1..=args.questions {
        let answer = block_on(reasoner.ask(&images[n % images.len()], SOAK_QUESTIONS[n % SOAK_QUESTIONS.len()]))?;
        if n % 10 == 0 {
            block_on(reasoner.explain(&answer, |_| true))?;
        }
        if n % 50 == 0 {
            let ms = window.elapsed().as_secs_f64() * 1e3 / 50.0;
            let rss = rss_mb().unwrap_or(0.0);
            println!("{n:>9} {rss:>9.0} {ms:>14.0}");
            samples.push(json!({ "questions": n, "rss_mb": rss, "ms_per_question": ms }));
            window = Instant::now();
        }
    }
    let report = json!({ "benchmark": "soak", "images": files.len(), "questions": args.questions, "explanation_every": 10, "samples": samples });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report).expect("json")).map_err(|e| Error::io(&args.json, e))?;
    println!("results → {}", args.json.display());
    Ok(())
}

pub fn run(which: Which, paths: &ModelPaths, threads: usize) -> Result<()> {
    let timed = |args: &BenchArgs| if args.runs == 0 { Err(Error::Other("--runs must be at least 1".into())) } else { Ok(()) };
    match &which {
        Which::Sam(args) => timed(args).and_then(|_| bench_sam(args, paths, threads)),
        Which::Llm(args) => timed(args).and_then(|_| bench_llm(args, paths, threads)),
        Which::Ask(args) => timed(args).and_then(|_| bench_ask(args, paths, threads)),
        Which::All(args) => {
            timed(args)?;
            if args.json.is_some() {
                return Err(Error::Other("bench all writes benches/results/{sam,llm,ask}.json; --json is for one benchmark".into()));
            }
            bench_sam(args, paths, threads)?;
            bench_llm(args, paths, threads)?;
            bench_ask(args, paths, threads)
        }
        Which::Soak(args) => bench_soak(args, paths),
    }
}
