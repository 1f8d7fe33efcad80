//! `medsee convert`: source checkpoints → Burn burnpack records (f32 and quantised variants),
//! plus the LLM's tokenizer as JSON, all listed with their sha256 in `index.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use super::gguf::Gguf;
use super::manifest::{self, SourceFile};
use super::quantize::{quantize_weights, WeightFormat};
use super::store::{page_files, read_verified, reason_heads_file, write_atomic, FileEntry, Index, Part, PART_BYTES, SMOLLM2_CONFIG, SMOLLM2_TOKENIZER};
use super::{converted_file_name, half_record_bytes, litemedsam, load_record, record_bytes, sha256_hex, smollm2, verify, Variant};
use crate::error::{Error, Result};
use crate::llm::tokenizer::TextTokenizer;
use crate::reason::ReasonConfig;


/// Where the fetched sources and the converted files live.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    pub sources: PathBuf,
    pub converted: PathBuf,
    /// The checkout's `models/`, where the project's own trained weights are committed.
    pub trained: PathBuf,
}

impl ModelPaths {
    /// `models/` of this checkout unless `MEDSEE_MODELS` points elsewhere.
    pub fn from_env_or(default_root: &Path) -> Self {
        let root = std::env::var_os("MEDSEE_MODELS").map(PathBuf::from).unwrap_or_else(|| default_root.to_path_buf());
        Self { trained: default_root.to_path_buf(), ..Self::under(&root) }
    }

    pub fn under(root: &Path) -> Self {
        Self { sources: root.join("sources"), converted: root.join("converted"), trained: root.to_path_buf() }
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

/// The outputs converted from one source, as (file name, bytes) pairs.
type Outputs = Vec<(String, Vec<u8>)>;

/// Converts every source whose outputs are missing, damaged, or made from another source file.
pub fn convert_all(paths: &ModelPaths, device: &Device, force: bool, log: &mut dyn FnMut(&str)) -> Result<()> {
    std::fs::create_dir_all(&paths.converted).map_err(|e| Error::io(&paths.converted, e))?;
    let mut index = Index::read(&paths.converted).unwrap_or_default();
    type Converter = fn(&ModelPaths, &[u8], &Device, &mut dyn FnMut(&str)) -> Result<Outputs>;
    let converters: [(&str, Vec<String>, Converter); 2] = [
        (manifest::LITEMEDSAM, variant_files(manifest::LITEMEDSAM), convert_litemedsam),
        (manifest::SMOLLM2, [variant_files(manifest::SMOLLM2), vec![SMOLLM2_TOKENIZER.into(), SMOLLM2_CONFIG.into()]].concat(), convert_smollm2),
    ];
    let mut known: Vec<String> = converters.iter().flat_map(|(_, outputs, _)| outputs.clone()).collect();
    known.extend(manifest::TRAINED.iter().map(|t| t.file.to_string()));
    known.push(reason_heads_file(Variant::Quantized).to_string());
    remove_stale(paths, &mut index, &known, log);
    for (id, outputs, convert) in converters {
        let source = manifest::source(id);
        let up_to_date = index.sources.get(id).map(String::as_str) == Some(source.sha256)
            && outputs.iter().all(|name| read_verified(&paths.converted, name).is_ok());
        if up_to_date && !force {
            log(&format!("{id}: up to date ({})", outputs.join(", ")));
            continue;
        }
        let bytes = read_source(paths, source)?;
        log(&format!("{id}: source {} ({} bytes, sha256 verified)", source.member, source.size));
        for (name, data) in convert(paths, &bytes, device, log)? {
            write_atomic(&paths.converted.join(&name), &data)?;
            index.files.insert(name.clone(), FileEntry { size: data.len() as u64, sha256: sha256_hex(&data), parts: Vec::new() });
            log(&format!("{id}: wrote {name} ({:.1} MB)", data.len() as f64 / 1e6));
        }
        index.sources.insert(id.to_string(), source.sha256.to_string());
        index.converter = format!("medsee {}", env!("CARGO_PKG_VERSION"));
        index.write(&paths.converted)?;
    }
    install_trained(paths, &mut index, log)?;
    split_for_the_page(paths, &mut index, log)?;
    index.write(&paths.converted)
}

/// Deletes files an earlier medsee version converted that this one no longer uses (e.g. the
/// former Q8 SmolLM2, 151 MB), with their page parts; files the index does not list are kept.
fn remove_stale(paths: &ModelPaths, index: &mut Index, known: &[String], log: &mut dyn FnMut(&str)) {
    let stale: Vec<String> = index.files.keys().filter(|name| !known.contains(name)).cloned().collect();
    for name in stale {
        let entry = index.files.remove(&name).expect("listed");
        for file in std::iter::once(name.as_str()).chain(entry.parts.iter().map(|p| p.name.as_str())) {
            let _ = std::fs::remove_file(paths.converted.join(file));
        }
        log(&format!("removed {name}: no longer used"));
    }
}

/// Splits the page's files larger than [`PART_BYTES`] into parts listed in the index.
fn split_for_the_page(paths: &ModelPaths, index: &mut Index, log: &mut dyn FnMut(&str)) -> Result<()> {
    for name in page_files() {
        let Some(entry) = index.files.get(&name).cloned() else { continue };
        let parts_ok = !entry.parts.is_empty()
            && entry.parts.iter().all(|p| std::fs::metadata(paths.converted.join(&p.name)).is_ok_and(|m| m.len() == p.size));
        if entry.size as usize <= PART_BYTES || parts_ok {
            continue;
        }
        let bytes = read_verified(&paths.converted, &name)?;
        let mut parts = Vec::new();
        for (i, chunk) in bytes.chunks(PART_BYTES).enumerate() {
            let part = format!("{name}.part{i:02}");
            write_atomic(&paths.converted.join(&part), chunk)?;
            parts.push(Part { name: part, size: chunk.len() as u64 });
        }
        log(&format!("{name}: split into {} parts for the page", parts.len()));
        index.files.insert(name, FileEntry { parts, ..entry });
    }
    Ok(())
}

/// Copies the project's trained files (checked against the manifest) next to the converted ones,
/// so the CLI and the page find every weight in one verified folder.
fn install_trained(paths: &ModelPaths, index: &mut Index, log: &mut dyn FnMut(&str)) -> Result<()> {
    for trained in manifest::TRAINED {
        if index.files.get(trained.file).is_some_and(|e| e.sha256 == trained.sha256) && read_verified(&paths.converted, trained.file).is_ok() {
            log(&format!("{}: up to date ({})", trained.id, trained.file));
            continue;
        }
        let path = paths.trained.join(trained.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::weights(path.display().to_string(), format!("{e}; it is part of the checkout")))?;
        verify(&path.display().to_string(), &bytes, trained.size, trained.sha256)?;
        write_atomic(&paths.converted.join(trained.file), &bytes)?;
        index.files.insert(trained.file.to_string(), FileEntry { size: trained.size, sha256: trained.sha256.to_string(), parts: Vec::new() });
        log(&format!("{}: installed {} ({:.1} MB, sha256 verified)", trained.id, trained.file, bytes.len() as f64 / 1e6));
    }
    quantize_heads(paths, index, log)
}

/// Writes the page's quantised copy of the installed reasoning heads (Linear weights Q8, blocks
/// of 32; the rest f16), remade whenever the committed heads change.
fn quantize_heads(paths: &ModelPaths, index: &mut Index, log: &mut dyn FnMut(&str)) -> Result<()> {
    let Some(trained) = manifest::trained(manifest::REASON_HEADS) else { return Ok(()) };
    let target = reason_heads_file(Variant::Quantized);
    if index.sources.get(trained.id).map(String::as_str) == Some(trained.sha256) && read_verified(&paths.converted, target).is_ok() {
        log(&format!("{}: up to date ({target})", trained.id));
        return Ok(());
    }
    let heads = ReasonConfig::smollm2_litemedsam()?.init(&Device::flex());
    // Checked against the manifest, not index.json: on a first conversion the index listing the
    // just-installed heads is not written yet.
    let installed = paths.converted.join(trained.file);
    let bytes = std::fs::read(&installed).map_err(|e| Error::io(&installed, e))?;
    verify(&installed.display().to_string(), &bytes, trained.size, trained.sha256)?;
    let heads = load_record(heads, trained.file, bytes)?;
    let (quantized, report) = quantize_weights(heads, WeightFormat::Q8Block32, &[]);
    let bytes = half_record_bytes(&quantized)?;
    write_atomic(&paths.converted.join(target), &bytes)?;
    index.files.insert(target.to_string(), FileEntry { size: bytes.len() as u64, sha256: sha256_hex(&bytes), parts: Vec::new() });
    index.sources.insert(trained.id.to_string(), trained.sha256.to_string());
    log(&format!("{}: wrote {target} ({:.1} MB; {} weights q8, {} kept f16)", trained.id, bytes.len() as f64 / 1e6, report.quantized, report.kept_f32.len()));
    Ok(())
}

fn variant_files(id: &str) -> Vec<String> {
    Variant::ALL.iter().map(|v| converted_file_name(id, *v)).collect()
}

fn convert_litemedsam(paths: &ModelPaths, _bytes: &[u8], device: &Device, log: &mut dyn FnMut(&str)) -> Result<Outputs> {
    let source = manifest::source(manifest::LITEMEDSAM);
    let started = Instant::now();
    let model = litemedsam::load_checkpoint(&paths.source_file(source), device)?;
    log(&format!("litemedsam: mapped to Burn (batch norms folded) in {:.1}s", started.elapsed().as_secs_f32()));
    let (quantized, report) = litemedsam::quantize(model.clone());
    log(&format!("litemedsam: q8 quantised {} weight tensors, kept {} unquantised (f16 on disk)", report.quantized, report.kept_f32.len()));
    Ok(vec![
        (converted_file_name(source.id, Variant::F32), record_bytes(model)?),
        (converted_file_name(source.id, Variant::Quantized), half_record_bytes(&quantized)?),
    ])
}

fn convert_smollm2(_paths: &ModelPaths, bytes: &[u8], device: &Device, log: &mut dyn FnMut(&str)) -> Result<Outputs> {
    let started = Instant::now();
    let gguf = Gguf::parse(bytes)?;
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let (config, model) = smollm2::load_gguf(&gguf, device)?;
    log(&format!("smollm2: dequantised and mapped to Burn in {:.1}s", started.elapsed().as_secs_f32()));
    let shipped = smollm2::block_record(&gguf)?;
    log(&format!("smollm2: 4-bit blocks (Q4_1 copied from the GGUF, embedding {})", smollm2::SHIPPED_EMBEDDING.name()));
    Ok(vec![
        (converted_file_name(manifest::SMOLLM2, Variant::F32), record_bytes(model)?),
        (converted_file_name(manifest::SMOLLM2, Variant::Quantized), shipped),
        (SMOLLM2_TOKENIZER.to_string(), tokenizer.to_json()?.into_bytes()),
        (SMOLLM2_CONFIG.to_string(), serde_json::to_vec_pretty(&config).expect("config serialises")),
    ])
}
