//! The converted-weights folder: burnpack files plus `index.json`, which records each file's
//! size and sha256 at conversion time so a truncated or altered file is refused by name.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

use super::{converted_file_name, manifest, Variant};

pub const INDEX_FILE: &str = "index.json";
/// The converted SmolLM2 tokenizer and architecture.
pub const SMOLLM2_TOKENIZER: &str = "smollm2-tokenizer.json";
pub const SMOLLM2_CONFIG: &str = "smollm2-config.json";
/// The trained reasoning heads (committed under `models/`, copied here by `medsee convert`).
pub const REASON_HEADS_FILE: &str = "reason-heads.bpk";
/// The page's copy of the heads, made by `medsee convert`: Linear weights Q8, the rest f16.
pub const REASON_HEADS_Q8_FILE: &str = "reason-heads-q8.bpk";

/// The reasoning heads' file for a weight variant.
pub fn reason_heads_file(variant: Variant) -> &'static str {
    match variant {
        Variant::F32 => REASON_HEADS_FILE,
        Variant::Quantized => REASON_HEADS_Q8_FILE,
    }
}

/// The files the page downloads (the shipped quantised variant), in the order `Engine.load` takes them.
pub fn page_files() -> Vec<String> {
    vec![
        converted_file_name(manifest::LITEMEDSAM, Variant::Quantized),
        converted_file_name(manifest::SMOLLM2, Variant::Quantized),
        SMOLLM2_TOKENIZER.to_string(),
        SMOLLM2_CONFIG.to_string(),
        reason_heads_file(Variant::Quantized).to_string(),
    ]
}

/// Size and digest of one converted file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
    /// For the page: the file split into consecutive parts of at most [`PART_BYTES`] (empty when
    /// it is small enough to serve whole). The sha256 above is of the whole file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// One consecutive piece of a file, served on its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    pub name: String,
    pub size: u64,
}

/// Largest file the page downloads in one piece (browsers and caches handle smaller files better).
pub const PART_BYTES: usize = 64 << 20;

/// Contents of `index.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Index {
    /// medsee version that wrote the files.
    pub converter: String,
    /// sha256 of each source file the conversion read, by manifest id.
    pub sources: BTreeMap<String, String>,
    pub files: BTreeMap<String, FileEntry>,
}

impl Index {
    /// Parses `index.json` text (the page fetches it; `origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::weights(origin, format!("not a valid index ({e})")))
    }

    /// The entry for `name`, or an error saying to convert again.
    pub fn entry(&self, name: &str) -> Result<&FileEntry> {
        self.files.get(name).ok_or_else(|| Error::weights(name, "not listed in the weights index; convert the weights again"))
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::weights(path.display().to_string(), format!("{e}; run the weights setup (scripts/medsee-up or `medsee convert`) first"))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("index serialises");
        write_atomic(&dir.join(INDEX_FILE), text.as_bytes())
    }
}

/// Reads `dir/name` and checks it against the index.
pub fn read_verified(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let index = Index::read(dir)?;
    let entry = index
        .files
        .get(name)
        .ok_or_else(|| Error::weights(name, format!("not listed in {}; convert the weights again", dir.join(INDEX_FILE).display())))?;
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| Error::weights(path.display().to_string(), e.to_string()))?;
    super::verify(&path.display().to_string(), &bytes, entry.size, &entry.sha256)?;
    Ok(bytes)
}

/// Writes through a temporary file and a rename, so readers never see a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
