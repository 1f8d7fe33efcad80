//! The converted-weights folder: burnpack files plus `index.json`, which records each file's
//! size and sha256 at conversion time so a truncated or altered file is refused by name.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

pub const INDEX_FILE: &str = "index.json";

/// Size and digest of one converted file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
}

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
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::weights(path.display().to_string(), format!("{e}; run the weights setup (scripts/medsee-up or `medsee convert`) first"))
        })?;
        serde_json::from_str(&text).map_err(|e| Error::weights(path.display().to_string(), format!("not a valid index ({e})")))
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
