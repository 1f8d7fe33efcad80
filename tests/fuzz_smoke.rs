//! The fuzz targets' smoke run, on every test run: each target's seed corpus, then deterministic
//! mutations of it (bit flips, byte stores, truncations, splices, inserted bytes), through the
//! same entry points the libFuzzer targets in `fuzz/` call. A panic fails the test and prints the
//! input that caused it. The long coverage-guided runs are `scripts/fuzz.sh` (README, Robustness).

mod common;

use std::path::Path;

use medsee::fuzzing;
use medsee::rng::SplitMix64;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every file directly under the given folders (relative to the crate root).
fn seeds(dirs: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in dirs {
        let dir = Path::new(ROOT).join(dir);
        let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
        paths.sort();
        out.extend(paths.iter().filter(|p| p.is_file()).map(|p| std::fs::read(p).unwrap()));
    }
    assert!(!out.is_empty(), "no seeds in {dirs:?}");
    out
}

/// One mutation of `seed`, chosen by `rng` (the mutations libFuzzer starts with).
fn mutate(seed: &[u8], other: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        let last = data.len().saturating_sub(1);
        match rng.below(6) {
            0 if !data.is_empty() => data[at.min(last)] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at.min(last)] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.below(5)],
            2 => data.truncate(at),
            3 => {
                let from = rng.below(other.len() + 1);
                let len = rng.below(other.len() - from + 1).min(64);
                data.splice(at..at, other[from..from + len].iter().copied());
            }
            4 => {
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.below(256) as u8).collect();
                data.splice(at..at, bytes);
            }
            _ if at + 4 <= data.len() => data[at..at + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]),
            _ => data.push(0),
        }
    }
    data
}

/// Runs `target` on every seed and on `mutations` mutants; a panic names the input.
fn smoke(name: &str, seeds: &[Vec<u8>], mutations: usize, target: impl Fn(&[u8])) {
    let mut rng = SplitMix64::new(0xf022);
    let run = |data: &[u8]| {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(data))).is_err() {
            let path = std::env::temp_dir().join(format!("medsee-fuzz-{name}-crash"));
            std::fs::write(&path, data).unwrap();
            panic!("{name}: the target panicked on an input of {} bytes (saved to {})", data.len(), path.display());
        }
    };
    for seed in seeds {
        run(seed);
    }
    for _ in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        run(&mutate(seed, other, &mut rng));
    }
}

#[test]
fn image_decoding_survives_its_corpus_and_mutations() {
    let seeds = seeds(&["fuzz/seeds/image", "tests/fixtures/bad", "tests/fixtures/dicom"]);
    smoke("image", &seeds, 800, fuzzing::image);
}

#[test]
fn gguf_reading_survives_its_corpus_and_mutations() {
    smoke("gguf", &seeds(&["fuzz/seeds/gguf"]), 3000, fuzzing::gguf);
}

#[test]
fn weights_loading_survives_its_corpus_and_mutations() {
    smoke("weights", &seeds(&["fuzz/seeds/weights"]), 3000, fuzzing::weights);
}

#[test]
fn question_handling_survives_its_corpus_and_mutations() {
    let tokenizer = std::fs::read(common::model_paths().converted.join("smollm2-tokenizer.json")).unwrap();
    let questions = fuzzing::Questions::new(&tokenizer).unwrap();
    smoke("question", &seeds(&["fuzz/seeds/question"]), 3000, |data| questions.run(data));
}

/// Writes `fuzz/seeds/weights/class-head.bpk`: a real burnpack record of the module the weights
/// target loads into (`fuzz/make_seeds.py` writes the other seeds).
#[test]
#[ignore = "writes a seed file; run by hand when the record format changes"]
fn write_weights_seed() {
    let module = medsee::reason::heads::ClassHead::new(8, 4, &burn::tensor::Device::flex());
    let bytes = medsee::weights::record_bytes(module).unwrap();
    std::fs::write(Path::new(ROOT).join("fuzz/seeds/weights/class-head.bpk"), bytes).unwrap();
    // The same head (32 inputs) as a file of ggml blocks, the shipped LLM's format.
    use burn::store::burn_pack::{DType, Tensor};
    use medsee::weights::blocks::{self, BlockMatrix};
    use medsee::weights::gguf::TensorType;
    let values: Vec<f32> = (0..4 * 32).map(|i| (i as f32 * 0.37).sin()).collect();
    let weight = BlockMatrix::quantize("linear.weight".into(), TensorType::Q4_1, 4, &values);
    let bias = Tensor::new("linear.bias".into(), DType::F32, vec![4], None, burn::tensor::Bytes::from_bytes_vec(vec![0; 16]));
    let bytes = blocks::write(vec![weight], vec![bias]).unwrap();
    std::fs::write(Path::new(ROOT).join("fuzz/seeds/weights/class-head-blocks.bpk"), bytes).unwrap();
}
