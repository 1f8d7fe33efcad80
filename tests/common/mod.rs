//! Shared helpers for the integration tests: fixture cases, converted weights, data paths.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use medsee::weights::convert::ModelPaths;
use medsee::{BoxSegmenter, Variant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The converted weights. Their absence is a failure, not a skip: the README's test command
/// fetches and converts them before running the tests.
pub fn model_paths() -> ModelPaths {
    let paths = ModelPaths::from_env_or(&repo().join("models"));
    assert!(
        paths.converted.join("index.json").exists(),
        "no converted weights in {}: run scripts/test (or `python3 scripts/fetch_weights.py && cargo run -- convert`)",
        paths.converted.display()
    );
    paths
}

pub fn segmenter(variant: Variant) -> BoxSegmenter {
    BoxSegmenter::load(&model_paths().converted, variant, Device::flex()).expect("converted weights load")
}

/// `../shared/data/medseg`, when this checkout has it beside it.
pub fn shared_data() -> Option<PathBuf> {
    let path = repo().join("../shared/data/medseg");
    path.join("index.jsonl").exists().then_some(path)
}

pub fn read_f32_file(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// One golden case written by tests/fixtures/make_litemedsam.py.
pub struct Case {
    pub dir: PathBuf,
    pub meta: serde_json::Value,
}

impl Case {
    pub fn all() -> Vec<Case> {
        let root = repo().join("tests/fixtures/litemedsam");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("case.json").exists())
            .collect();
        dirs.sort();
        assert!(dirs.len() >= 4, "expected at least 4 golden cases in {}", root.display());
        dirs.into_iter()
            .map(|dir| {
                let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
                Case { dir, meta }
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        self.meta["case"].as_str().unwrap()
    }

    pub fn usize(&self, key: &str) -> usize {
        self.meta[key].as_u64().unwrap() as usize
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        self.meta[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
    }
}
