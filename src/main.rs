//! The `medsee` command line: the same engine as the page, on native CPU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use medsee::image::mask::{overlay_png, OverlayStyle};
use medsee::image::{decode_image, PixelBox};
use medsee::weights::convert::{convert_all, ModelPaths};
use medsee::{BoxSegmenter, Error, Result, Variant};

mod bench;

#[derive(Parser)]
#[command(name = "medsee", version, about = "Medical image segmentation that runs on your own device")]
struct Cli {
    /// Folder holding `sources/` and `converted/` (default: this checkout's models/, or $MEDSEE_MODELS).
    #[arg(long, global = true)]
    models: Option<PathBuf>,
    /// CPU threads for the model (default 2).
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert the fetched source weights into Burn records (f32 and quantised).
    Convert {
        /// Convert again even if the outputs are up to date.
        #[arg(long)]
        force: bool,
    },
    /// Ask a question about an image: mask, box and a streamed explanation.
    Ask(AskArgs),
    /// Segment the object inside a box (MedSAM-style box prompt).
    Segment(SegmentArgs),
    /// Ask the language model (SmolLM2) directly; the answer streams to stdout.
    Chat(ChatArgs),
    /// Print generated training questions as JSON lines (question generator of the reasoning model).
    Questions {
        /// Data split to draw images from: train or val.
        #[arg(long, default_value = "train")]
        split: String,
        /// Use the held-out phrasings (evaluation) instead of the training ones.
        #[arg(long)]
        held_out: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images to generate questions for.
        #[arg(long, default_value_t = 5)]
        images: usize,
        /// Negative questions per image.
        #[arg(long, default_value_t = 1)]
        negatives: usize,
    },
    /// Train the reasoning heads (LiteMedSAM and SmolLM2 frozen); resumes from a checkpoint.
    Train {
        #[arg(long, default_value_t = 2000)]
        steps: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training images per data set.
        #[arg(long, default_value_t = 20)]
        images_per_set: usize,
        /// Share of questions about absent structures.
        #[arg(long, default_value_t = 0.2)]
        negative_rate: f64,
        #[arg(long, default_value_t = 250)]
        checkpoint_every: usize,
        /// Questions whose LLM states the warm-up computes once (fresh runs only).
        #[arg(long, default_value_t = 2000)]
        warmup_questions: usize,
        /// Batched steps (8 questions each) of the heads before the mask decoder on those states (0: no warm-up).
        #[arg(long, default_value_t = 3000)]
        warmup_steps: usize,
        /// Questions whose LLM states the refit computes once with the trained heads.
        #[arg(long, default_value_t = 3000)]
        refit_questions: usize,
        /// Batched steps of the box, content and class heads on those states after the full run (0: no refit).
        #[arg(long, default_value_t = 2000)]
        refit_steps: usize,
        /// Held-out training images per data set on which the decoder-prompt gates are calibrated (0: MediSee's prompt everywhere).
        #[arg(long, default_value_t = 40)]
        calibration_images_per_set: usize,
        /// Epochs of the place head (where each structure lies) over the training images' embeddings and masks (0: none).
        #[arg(long, default_value_t = 10)]
        place_epochs: usize,
        /// Training images per data set for the place head (the calibration's held-out images excepted).
        #[arg(long, default_value_t = 240)]
        place_images_per_set: usize,
        /// Steps (4 questions each) of the explanation's soft prompt under the LM loss on the answer text (0: none).
        #[arg(long, default_value_t = 300)]
        explanation_steps: usize,
        /// Fine-tune these trained heads (e.g. models/reason-heads.bpk) instead of starting fresh: no warm-up.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Output folder (heads, state, curves, embedding cache).
        #[arg(long, default_value = "models/train")]
        out: PathBuf,
    },
    /// Evaluate the reasoning model (with its text-only baseline and upper bound) on a data split.
    Eval {
        /// Data folder with index.jsonl, images/ and masks/ (default: ../shared/data/medseg).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Split to evaluate: val, test (or train).
        #[arg(long, default_value = "val")]
        split: String,
        /// JSON lines of {"id", "question", "class"} (class null: absent) replacing the generated questions.
        #[arg(long)]
        questions: Option<PathBuf>,
        /// Reasoning heads to evaluate instead of the shipped ones.
        #[arg(long)]
        heads: Option<PathBuf>,
        /// Weights to evaluate, comma-separated.
        #[arg(long, default_value = "f32,quantized", value_delimiter = ',', value_parser = parse_variant)]
        variants: Vec<Variant>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Embedding cache folder (one subfolder per variant).
        #[arg(long, default_value = "models/train/eval-cache")]
        cache: PathBuf,
        /// Where to write the JSON results.
        #[arg(long, default_value = "benches/results/eval.json")]
        json: PathBuf,
        /// Also write one JSON line per question (asked, understood, found, presence, mask and box IoU).
        #[arg(long)]
        answers: Option<PathBuf>,
    },
    /// Check that this build reproduces `models/device-check.json` (the check the page runs on
    /// WebGPU before using it): a fixed image and question through the shipped quantised model on the CPU.
    DeviceCheck {
        /// Write the reference file from this run instead of comparing with it.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Benchmarks that print a table and write JSON.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[derive(Args)]
struct SegmentArgs {
    /// PNG, JPEG or DICOM image.
    image: PathBuf,
    /// Box around the object in pixels: x0,y0,x1,y1.
    #[arg(long = "box", value_parser = parse_box)]
    bbox: PixelBox,
    #[command(flatten)]
    outputs: Outputs,
    /// Weights to use.
    #[arg(long, default_value = "quantized", value_parser = parse_variant)]
    variant: Variant,
}

/// Where `segment` and `ask` write their results.
#[derive(Args)]
struct Outputs {
    /// Where to write the mask PNG (values 0/255; empty when nothing is found).
    #[arg(long, default_value = "mask.png")]
    out: PathBuf,
    /// Also write the image with the mask (outline + fill) and the box drawn on it.
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// Also write a JSON summary.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct AskArgs {
    /// PNG, JPEG or DICOM image.
    image: PathBuf,
    /// The question, in plain words ("which part helps me breathe?").
    question: String,
    #[command(flatten)]
    outputs: Outputs,
    /// Also write the similarity map ("where the model looked") over the image.
    #[arg(long)]
    heatmap: Option<PathBuf>,
    /// Skip the explanation (mask and box only).
    #[arg(long)]
    no_explanation: bool,
    /// Weights to use.
    #[arg(long, default_value = "quantized", value_parser = parse_variant)]
    variant: Variant,
    /// Reasoning heads to use instead of the shipped ones (e.g. fresh from `medsee train`).
    #[arg(long)]
    heads: Option<PathBuf>,
}

#[derive(Args)]
struct ChatArgs {
    /// The message to send.
    prompt: String,
    /// Weights to use.
    #[arg(long, default_value = "quantized", value_parser = parse_variant)]
    variant: Variant,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (with a temperature above 0).
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_box(text: &str) -> std::result::Result<PixelBox, String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>().map_err(|_| format!("{v:?} is not a number")))
        .collect::<std::result::Result<_, _>>()?;
    match values.as_slice() {
        [x0, y0, x1, y1] => Ok(PixelBox::new(*x0, *y0, *x1, *y1)),
        _ => Err(format!("expected 4 numbers x0,y0,x1,y1, got {}", values.len())),
    }
}

fn parse_variant(text: &str) -> std::result::Result<Variant, String> {
    text.parse().map_err(|e: Error| e.to_string())
}

fn model_paths(cli_models: &Option<PathBuf>) -> ModelPaths {
    match cli_models {
        Some(root) => ModelPaths::under(root),
        None => ModelPaths::from_env_or(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models")),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn segment(paths: &ModelPaths, args: &SegmentArgs) -> Result<()> {
    let bytes = std::fs::read(&args.image).map_err(|e| Error::io(&args.image, e))?;
    let image = decode_image(&bytes)?;
    // Check the box before paying for the encoder.
    args.bbox.validated(image.width, image.height)?;
    let started = Instant::now();
    let segmenter = BoxSegmenter::load(&paths.converted, args.variant, Device::flex())?;
    let load_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let embedding = segmenter.encode(&image);
    let result = futures_lite::future::block_on(segmenter.segment_box(&embedding, args.bbox))?;
    let total_s = started.elapsed().as_secs_f64();

    write_file(&args.outputs.out, &result.mask.to_png()?)?;
    if let Some(path) = &args.outputs.overlay {
        write_file(path, &overlay_png(&image, &result.mask, &[result.prompt], OverlayStyle::default())?)?;
    }
    let summary = serde_json::json!({
        "image": args.image,
        "width": image.width,
        "height": image.height,
        "variant": args.variant,
        "box_prompt": result.prompt.as_array(),
        "mask_box": result.mask_box.map(|b| b.as_array()),
        "mask_area": result.mask.area(),
        "iou_prediction": result.iou_prediction,
        "seconds": { "load": load_s, "encode_and_decode": total_s },
    });
    if let Some(path) = &args.outputs.json {
        write_file(path, serde_json::to_string_pretty(&summary).expect("json").as_bytes())?;
    }
    println!(
        "mask: {} pixels, predicted IoU {:.3}, {:.2}s → {}",
        result.mask.area(),
        result.iou_prediction,
        total_s,
        args.outputs.out.display()
    );
    Ok(())
}

fn ask(paths: &ModelPaths, args: &AskArgs) -> Result<()> {
    use std::io::Write;
    use medsee::ask::{clean_question, heatmap_bytes};
    use medsee::image::mask::heat_overlay_png;
    let bytes = std::fs::read(&args.image).map_err(|e| Error::io(&args.image, e))?;
    let image = decode_image(&bytes)?;
    // Check the question before paying for the models.
    clean_question(&args.question)?;
    let started = Instant::now();
    let reasoner = medsee::Reasoner::load(paths, args.variant, args.heads.as_deref())?;
    let load_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let encoded = reasoner.encode(&image);
    let encode_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let answer = futures_lite::future::block_on(reasoner.ask(&encoded, &args.question))?;
    let answer_s = started.elapsed().as_secs_f64();
    match (&answer.bbox, &answer.structure) {
        (Some(b), structure) => eprintln!(
            "found{}: box {:.0},{:.0},{:.0},{:.0}, {} pixels, presence {:.2} ({answer_s:.2}s)",
            structure.as_ref().map(|s| format!(" the {}", s.name)).unwrap_or_default(),
            b.x0, b.y0, b.x1, b.y1, answer.mask_area, answer.presence
        ),
        (None, _) => eprintln!("not found (presence {:.2}, {answer_s:.2}s)", answer.presence),
    }
    write_file(&args.outputs.out, &answer.mask.to_png()?)?;
    if let Some(path) = &args.outputs.overlay {
        write_file(path, &overlay_png(&image, &answer.mask, answer.bbox.as_slice(), OverlayStyle::default())?)?;
    }
    if let Some(path) = &args.heatmap {
        let (w, h, cells) = heatmap_bytes(&answer.heatmap);
        write_file(path, &heat_overlay_png(&image, &cells, w as u32, h as u32)?)?;
    }
    let started = Instant::now();
    let explanation = if args.no_explanation {
        None
    } else {
        let text = futures_lite::future::block_on(reasoner.explain(&answer, |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
            true
        }))?;
        println!();
        Some(text)
    };
    let explain_s = started.elapsed().as_secs_f64();
    if let Some(path) = &args.outputs.json {
        let summary = serde_json::json!({
            "image": args.image,
            "width": image.width,
            "height": image.height,
            "variant": args.variant,
            "answer": answer,
            "explanation": explanation,
            "seconds": { "load": load_s, "encode": encode_s, "question_to_mask": answer_s, "explanation": explain_s },
        });
        write_file(path, serde_json::to_string_pretty(&summary).expect("json").as_bytes())?;
    }
    Ok(())
}

fn chat(paths: &ModelPaths, args: &ChatArgs) -> Result<()> {
    use std::io::Write;
    use medsee::llm::chat::{chat_ids, Message, Role};
    use medsee::llm::generate::{generate_from_ids, GenerateOptions, Sampling};
    if args.prompt.trim().is_empty() {
        return Err(Error::Prompt("the message is empty".into()));
    }
    let llm = medsee::llm::TextModel::load(&paths.converted, args.variant, &Device::flex())?;
    let prompt = chat_ids(&llm.tokenizer, &[Message::new(Role::User, args.prompt.clone())], true)?;
    let sampling = if args.temperature > 0.0 {
        Sampling::TopP { temperature: args.temperature, top_p: args.top_p, seed: args.seed }
    } else {
        Sampling::Greedy
    };
    let options = GenerateOptions { max_tokens: args.max_tokens, sampling, stop_tokens: vec![llm.tokenizer.im_end, llm.tokenizer.end_of_text], no_repeat_ngram: 0 };
    // Decode the whole answer so far each time: byte-level tokens may split a character.
    let mut answer: Vec<u32> = Vec::new();
    let mut printed = 0;
    let started = Instant::now();
    let generated = futures_lite::future::block_on(generate_from_ids(&llm.model, &prompt, &options, |token| {
        answer.push(token);
        if let Ok(text) = llm.tokenizer.decode(&answer) {
            if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{fffd}') {
                print!("{}", &text[printed..]);
                let _ = std::io::stdout().flush();
                printed = text.len();
            }
        }
        true
    }))?;
    let seconds = started.elapsed().as_secs_f64();
    println!();
    eprintln!(
        "[{} prompt + {} generated tokens in {:.1}s, {:?}]",
        prompt.len(),
        generated.tokens.len(),
        seconds,
        generated.stop
    );
    Ok(())
}

fn questions(split: &str, held_out: bool, seed: u64, images: usize, negatives: usize) -> Result<()> {
    use medsee::train::dataset::{Dataset, Split};
    use medsee::reason::knowledge::Knowledge;
    use medsee::train::questions::{Phrasings, QuestionGenerator};
    let split: Split = split.parse()?;
    let data = Dataset::load(&Dataset::default_root())?;
    let others: Vec<(String, Vec<String>)> = data.classes().into_iter().collect();
    let phrasings = if held_out { Phrasings::HeldOut } else { Phrasings::Train };
    let generator = QuestionGenerator::new(Knowledge::load()?, phrasings);
    let mut rng = medsee::rng::SplitMix64::new(seed);
    let items: Vec<_> = data.split(split).collect();
    for _ in 0..images.min(items.len()) {
        let item = items[rng.below(items.len())];
        for q in generator.for_image(item, &others, negatives, &mut rng) {
            println!("{}", serde_json::json!({ "image": item.image, "modality": item.modality, "question": q }));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.max(1))
        .build_global()
        .map_err(|e| Error::Other(format!("cannot start {} threads: {e}", cli.threads)))?;
    let paths = model_paths(&cli.models);
    match cli.command {
        Command::Convert { force } => {
            let mut log = |line: &str| println!("convert: {line}");
            convert_all(&paths, &Device::flex(), force, &mut log)?;
            println!("convert: done → {}", paths.converted.display());
            Ok(())
        }
        Command::Ask(args) => ask(&paths, &args),
        Command::Segment(args) => segment(&paths, &args),
        Command::Chat(args) => chat(&paths, &args),
        Command::Questions { split, held_out, seed, images, negatives } => questions(&split, held_out, seed, images, negatives),
        Command::Eval { data, split, questions, heads, variants, seed, cache, json, answers } => {
            let data = data.unwrap_or_else(medsee::train::dataset::Dataset::default_root);
            let config = medsee::train::eval::EvalConfig { data, split: split.parse()?, questions, heads, variants, seed, cache_dir: cache, answers };
            let report = medsee::train::eval::evaluate(&paths, &config, &mut |line| eprintln!("{line}"))?;
            std::fs::write(&json, serde_json::to_string_pretty(&report).expect("json")).map_err(|e| Error::io(&json, e))?;
            let chart = json.with_extension("png");
            std::fs::write(&chart, medsee::train::eval::chart(&report)?).map_err(|e| Error::io(&chart, e))?;
            println!("results → {} and {}", json.display(), chart.display());
            Ok(())
        }
        Command::Train { steps, lr, seed, images_per_set, negative_rate, checkpoint_every, warmup_questions, warmup_steps, refit_questions, refit_steps, calibration_images_per_set, place_epochs, place_images_per_set, explanation_steps, from, out } => {
            let config = medsee::train::trainer::TrainConfig {
                steps,
                learning_rate: lr,
                seed,
                images_per_set,
                negative_rate,
                checkpoint_every: checkpoint_every.max(1),
                warmup_questions,
                warmup_steps,
                refit_questions,
                refit_steps,
                calibration_images_per_set,
                place_epochs,
                place_images_per_set,
                explanation_steps,
                start_from: from,
                output_dir: out,
            };
            medsee::train::trainer::train(&paths, &config, &mut |line| println!("train: {line}"))
        }
        Command::DeviceCheck { write } => device_check(&paths, write.as_deref()),
        Command::Bench { which } => bench::run(which, &paths, cli.threads),
    }
}

fn device_check(paths: &ModelPaths, write: Option<&Path>) -> Result<()> {
    use medsee::device_check::DeviceCheck;
    let reasoner = medsee::Reasoner::load(paths, Variant::Quantized, None)?;
    if let Some(out) = write {
        let measured = futures_lite::future::block_on(DeviceCheck::measure(&reasoner, None))?;
        let text = serde_json::to_string(&measured).expect("json") + "\n";
        std::fs::write(out, text).map_err(|e| Error::io(out, e))?;
        println!("device check reference → {}", out.display());
        return Ok(());
    }
    let report = futures_lite::future::block_on(DeviceCheck::verify(&reasoner))?;
    println!("{}", report.describe());
    println!("device check passed");
    Ok(())
}

fn main() -> ExitCode {
    keep_large_allocations_in_the_heap();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("medsee: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// glibc serves every allocation above its mmap threshold (at most 32 MB by default) with a
/// fresh mapping and returns it on free: each of TinyViT's 16–64 MB activations then costs
/// zeroed pages and TLB shoot-downs across the threads (`perf`: a quarter of the encoder's time
/// in the kernel). Below 256 MB, freed blocks now stay in the heap and are reused: encode
/// 2.0–2.4 s → 1.2–1.6 s here. The bound keeps what a process holds on to small: with 1 GB,
/// `bench ask` (both variants loaded in turn) peaked at 1.62 GB instead of 1.12 GB.
fn keep_large_allocations_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 256 << 20;
        // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
}
