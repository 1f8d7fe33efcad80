//! The medseg data set in `../shared/data/medseg` (read in place, never copied): one record per
//! (image, class) from `index.jsonl`, grouped by image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::preprocess::scaled_size;
use crate::sam::INPUT_SIZE;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    /// The held-out split, kept outside the project; evaluation runs on it unchanged.
    Test,
}

impl std::str::FromStr for Split {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(Error::Other(format!("unknown split {other:?} (train, val or test)"))),
        }
    }
}

/// One line of `index.jsonl`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Record {
    pub id: String,
    pub set: String,
    pub modality: String,
    pub image: String,
    pub mask: String,
    pub class: String,
    pub width: u32,
    pub height: u32,
    /// `[x0, y0, x1, y1]`, x1/y1 exclusive.
    pub bbox: [u32; 4],
    pub area: u64,
    pub split: Split,
}

/// An image with every class annotated on it.
#[derive(Debug, Clone)]
pub struct ImageItem {
    pub id: String,
    pub modality: String,
    pub image: PathBuf,
    pub split: Split,
    pub objects: Vec<Record>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub images: Vec<ImageItem>,
}

impl Dataset {
    /// `../shared/data/medseg` next to this checkout, if present.
    pub fn default_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/medseg")
    }

    pub fn load(root: &Path) -> Result<Self> {
        let index = root.join("index.jsonl");
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let mut by_image: BTreeMap<String, ImageItem> = BTreeMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let record: Record =
                serde_json::from_str(line).map_err(|e| Error::Other(format!("{}:{}: {e}", index.display(), n + 1)))?;
            let item = by_image.entry(record.id.clone()).or_insert_with(|| ImageItem {
                id: record.id.clone(),
                modality: record.modality.clone(),
                image: root.join(&record.image),
                split: record.split.clone(),
                objects: Vec::new(),
            });
            item.objects.push(record);
        }
        Ok(Self { root: root.to_path_buf(), images: by_image.into_values().collect() })
    }

    pub fn split(&self, split: Split) -> impl Iterator<Item = &ImageItem> {
        self.images.iter().filter(move |i| i.split == split)
    }

    /// Every class of `classes.json` with its modalities — including classes that only occur in
    /// the held-out test split kept outside the project.
    pub fn all_classes(&self) -> Result<BTreeMap<String, Vec<String>>> {
        #[derive(serde::Deserialize)]
        struct Entry {
            class: String,
            modality: String,
        }
        let path = self.root.join("classes.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in entries {
            out.entry(e.class).or_default().push(e.modality);
        }
        Ok(out)
    }

    /// Mean (cx, cy, w, h) box of every class in `split`, normalised to the padded model input:
    /// where such a structure usually lies (the box head's anchors; the text-only baseline's whole
    /// knowledge of where things are).
    pub fn mean_boxes(&self, split: Split) -> BTreeMap<String, [f32; 4]> {
        let mut sums: BTreeMap<String, ([f64; 4], usize)> = BTreeMap::new();
        for record in self.split(split).flat_map(|i| &i.objects) {
            let (_, _, scale) = scaled_size(record.width, record.height);
            let [x0, y0, x1, y1] = record.bbox.map(|v| v as f64 * scale as f64 / INPUT_SIZE as f64);
            let entry = sums.entry(record.class.clone()).or_default();
            for (s, v) in entry.0.iter_mut().zip([(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]) {
                *s += v;
            }
            entry.1 += 1;
        }
        sums.into_iter().map(|(class, (s, n))| (class, s.map(|v| (v / n as f64) as f32))).collect()
    }

    /// Every (class, modality) pair annotated in train and val.
    pub fn classes(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in &self.images {
            for o in &item.objects {
                let modalities = out.entry(o.class.clone()).or_default();
                if !modalities.contains(&o.modality) {
                    modalities.push(o.modality.clone());
                }
            }
        }
        out
    }
}
