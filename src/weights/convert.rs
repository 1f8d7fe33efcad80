//! `medsee convert`: source checkpoints → Burn burnpack records (f32 and quantised variants).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use super::manifest::{self, SourceFile};
use super::store::{FileEntry, Index};
use super::{converted_file_name, litemedsam, record_bytes, sha256_hex, verify, Variant};
use crate::error::{Error, Result};

/// Where the fetched sources and the converted files live.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    pub sources: PathBuf,
    pub converted: PathBuf,
}

impl ModelPaths {
    /// `models/` of this checkout unless `MEDSEE_MODELS` points elsewhere.
    pub fn from_env_or(default_root: &Path) -> Self {
        let root = std::env::var_os("MEDSEE_MODELS").map(PathBuf::from).unwrap_or_else(|| default_root.to_path_buf());
        Self::under(&root)
    }

    pub fn under(root: &Path) -> Self {
        Self { sources: root.join("sources"), converted: root.join("converted") }
    }

    pub fn source_file(&self, source: &SourceFile) -> PathBuf {
        self.sources.join(source.id).join(source.member)
    }
}

/// Reads a source file and checks it against the manifest.
pub fn read_source(paths: &ModelPaths, source: &SourceFile) -> Result<Vec<u8>> {
    let path = paths.source_file(source);
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::weights(path.display().to_string(), format!("{e}; fetch it with `python3 scripts/fetch_weights.py`"))
    })?;
    verify(&path.display().to_string(), &bytes, source.size, source.sha256)?;
    Ok(bytes)
}

/// Converts LiteMedSAM unless the converted files are already there, intact, and made from
/// the same source. Returns true when it (re)converted.
pub fn convert_litemedsam(paths: &ModelPaths, device: &Device, force: bool, log: &mut dyn FnMut(&str)) -> Result<bool> {
    let source = manifest::source(manifest::LITEMEDSAM);
    let source_bytes = read_source(paths, source)?;
    log(&format!("source  {} ({} bytes, sha256 verified)", source.member, source.size));
    std::fs::create_dir_all(&paths.converted).map_err(|e| Error::io(&paths.converted, e))?;

    let mut index = Index::read(&paths.converted).unwrap_or_default();
    let names: Vec<String> = Variant::ALL.iter().map(|v| converted_file_name(source.id, *v)).collect();
    let up_to_date = index.sources.get(source.id).map(String::as_str) == Some(source.sha256)
        && names.iter().all(|n| super::store::read_verified(&paths.converted, n).is_ok());
    if up_to_date && !force {
        log("litemedsam: converted files are up to date (use --force to redo)");
        return Ok(false);
    }
    drop(source_bytes);

    let started = Instant::now();
    let model = litemedsam::load_checkpoint(&paths.source_file(source), device)?;
    log(&format!("mapped  lite_medsam.pth → Burn model (batch norms folded) in {:.1}s", started.elapsed().as_secs_f32()));
    for variant in Variant::ALL {
        let started = Instant::now();
        let bytes = match variant {
            Variant::F32 => record_bytes(model.clone())?,
            Variant::Q8 => {
                let (quantized, report) = litemedsam::quantize(model.clone());
                log(&format!("q8      {} weight tensors quantised, {} kept f32", report.quantized, report.kept_f32.len()));
                record_bytes(quantized)?
            }
        };
        let name = converted_file_name(source.id, variant);
        super::store::write_atomic(&paths.converted.join(&name), &bytes)?;
        index.files.insert(name.clone(), FileEntry { size: bytes.len() as u64, sha256: sha256_hex(&bytes) });
        log(&format!("wrote   {} ({:.1} MB) in {:.1}s", name, bytes.len() as f64 / 1e6, started.elapsed().as_secs_f32()));
    }
    index.converter = format!("medsee {}", env!("CARGO_PKG_VERSION"));
    index.sources.insert(source.id.to_string(), source.sha256.to_string());
    index.write(&paths.converted)?;
    Ok(true)
}
