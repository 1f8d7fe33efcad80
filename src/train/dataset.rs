//! The medseg data set in `../shared/data/medseg` (read in place, never copied): one record per
//! (image, class) from `index.jsonl`, grouped by image, plus the wholes of [`WHOLES`] where an
//! image has all their parts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::preprocess::scaled_size;
use crate::sam::INPUT_SIZE;

pub use crate::reason::knowledge::WHOLES;

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
    /// Mask files (0/255 PNG) whose union is the structure: one for an annotated class, one per
    /// part for a whole of [`WHOLES`].
    #[serde(rename = "mask", deserialize_with = "one_mask")]
    pub masks: Vec<String>,
    pub class: String,
    pub width: u32,
    pub height: u32,
    /// `[x0, y0, x1, y1]`, x1/y1 exclusive.
    pub bbox: [u32; 4],
    pub area: u64,
    pub split: Split,
}

fn one_mask<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Vec<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(deserializer).map(|mask| vec![mask])
}

impl Record {
    /// The structure's mask at image resolution: the union of its mask files (0/255).
    pub fn load_mask(&self, root: &Path) -> Result<image::GrayImage> {
        let mut union: Option<image::GrayImage> = None;
        for file in &self.masks {
            let path = root.join(file);
            let part = image::open(&path).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?.to_luma8();
            match &mut union {
                None => union = Some(part),
                Some(u) if u.dimensions() == part.dimensions() => u.pixels_mut().zip(part.pixels()).for_each(|(a, b)| a.0[0] = a.0[0].max(b.0[0])),
                Some(u) => {
                    return Err(Error::Other(format!("{}: {:?} does not match the size of the other masks {:?}", path.display(), part.dimensions(), u.dimensions())))
                }
            }
        }
        union.ok_or_else(|| Error::Other(format!("{}: the {} record has no mask", self.id, self.class)))
    }

    /// The record of `class` made of `parts` (records of one image): their masks, the box around
    /// their boxes, their summed area (the parts of a whole do not overlap).
    fn whole(class: &str, parts: &[&Record]) -> Record {
        let first = parts[0];
        let bbox = parts.iter().fold(first.bbox, |[x0, y0, x1, y1], p| [x0.min(p.bbox[0]), y0.min(p.bbox[1]), x1.max(p.bbox[2]), y1.max(p.bbox[3])]);
        Record {
            class: class.to_string(),
            masks: parts.iter().flat_map(|p| p.masks.clone()).collect(),
            bbox,
            area: parts.iter().map(|p| p.area).sum(),
            ..first.clone()
        }
    }
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

impl ImageItem {
    /// The data set an image belongs to: its id's first path segment (`<set>/<name>`).
    pub fn data_set(&self) -> &str {
        self.id.split('/').next().unwrap_or_default()
    }

    /// What the image shows, one 0/1 per class of `class_names`: the content head's target, and
    /// what its thresholds are calibrated against.
    pub fn shown(&self, class_names: &[String]) -> Vec<f32> {
        class_names.iter().map(|class| f32::from(u8::from(self.objects.iter().any(|o| &o.class == class)))).collect()
    }
}

#[cfg(test)]
impl ImageItem {
    /// An image of data set `set` annotated with `classes` (files that need not exist).
    pub(crate) fn fixture(set: &str, modality: &str, classes: &[&str]) -> Self {
        let id = format!("{set}/1");
        let objects = classes
            .iter()
            .map(|class| Record {
                id: id.clone(),
                set: set.into(),
                modality: modality.into(),
                image: format!("images/{id}.png"),
                masks: vec![format!("masks/{id}__{class}.png")],
                class: class.to_string(),
                width: 64,
                height: 64,
                bbox: [0, 0, 8, 8],
                area: 64,
                split: Split::Train,
            })
            .collect();
        ImageItem { id: id.clone(), modality: modality.into(), image: format!("images/{id}.png").into(), split: Split::Train, objects }
    }
}

/// Adds each whole of [`WHOLES`] that `item` has every part of and not the whole itself.
fn add_wholes(item: &mut ImageItem) {
    for (whole, parts) in WHOLES {
        if item.objects.iter().any(|o| o.class == *whole) {
            continue;
        }
        let found: Vec<&Record> = parts.iter().filter_map(|p| item.objects.iter().find(|o| o.class == *p)).collect();
        if found.len() == parts.len() {
            let record = Record::whole(whole, &found);
            item.objects.push(record);
        }
    }
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
        for item in by_image.values_mut() {
            add_wholes(item);
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
        for (whole, parts) in WHOLES {
            let shared: Vec<String> = out
                .get(parts[0])
                .into_iter()
                .flatten()
                .filter(|m| parts.iter().all(|p| out.get(*p).is_some_and(|ms| ms.contains(m))))
                .cloned()
                .collect();
            let modalities = out.entry(whole.to_string()).or_default();
            for m in shared {
                if !modalities.contains(&m) {
                    modalities.push(m);
                }
            }
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

    /// Every (class, modality) pair annotated in train and val (wholes included).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(class: &str, bbox: [u32; 4], area: u64) -> Record {
        Record {
            id: "jsrt/1".into(),
            set: "jsrt".into(),
            modality: "xray".into(),
            image: "images/jsrt/1.png".into(),
            masks: vec![format!("masks/jsrt/1__{class}.png")],
            class: class.into(),
            width: 100,
            height: 80,
            bbox,
            area,
            split: Split::Val,
        }
    }

    fn item(objects: Vec<Record>) -> ImageItem {
        ImageItem { id: "jsrt/1".into(), modality: "xray".into(), image: "images/jsrt/1.png".into(), split: Split::Val, objects }
    }

    #[test]
    fn an_image_with_both_lungs_also_shows_the_lungs() {
        let mut chest = item(vec![record("heart", [40, 30, 60, 60], 300), record("right_lung", [10, 5, 45, 70], 1500), record("left_lung", [55, 8, 90, 72], 1400)]);
        add_wholes(&mut chest);
        assert_eq!(chest.objects.len(), 4);
        let lungs = chest.objects.iter().find(|o| o.class == "lungs").expect("lungs added");
        assert_eq!(lungs.masks, ["masks/jsrt/1__left_lung.png", "masks/jsrt/1__right_lung.png"]);
        assert_eq!(lungs.bbox, [10, 5, 90, 72]);
        assert_eq!(lungs.area, 2900);
        assert_eq!((lungs.width, lungs.height, lungs.split.clone()), (100, 80, Split::Val));
    }

    #[test]
    fn a_whole_needs_every_part_and_is_never_added_twice() {
        let mut one_lung = item(vec![record("left_lung", [55, 8, 90, 72], 1400)]);
        add_wholes(&mut one_lung);
        assert_eq!(one_lung.objects.len(), 1);
        let mut annotated = item(vec![record("lungs", [1, 1, 9, 9], 50), record("left_lung", [1, 1, 4, 9], 20), record("right_lung", [5, 1, 9, 9], 25)]);
        add_wholes(&mut annotated);
        assert_eq!(annotated.objects.iter().filter(|o| o.class == "lungs").count(), 1);
        assert_eq!(annotated.objects[0].masks, ["masks/jsrt/1__lungs.png"]);
    }

    #[test]
    fn index_lines_read_their_one_mask() {
        let line = r#"{"id":"a/1","set":"a","modality":"ct","image":"images/a/1.png","mask":"masks/a/1__liver.png","class":"liver","width":4,"height":4,"bbox":[0,0,2,2],"area":4,"split":"train"}"#;
        let record: Record = serde_json::from_str(line).unwrap();
        assert_eq!(record.masks, ["masks/a/1__liver.png"]);
    }

    #[test]
    fn the_shared_data_asks_for_lungs_on_chest_xrays() {
        let root = Dataset::default_root();
        if !root.join("index.jsonl").exists() {
            eprintln!("skipped: no data at {}", root.display());
            return;
        }
        let data = Dataset::load(&root).unwrap();
        let xrays_with_lungs = data.images.iter().filter(|i| i.modality == "xray" && i.objects.iter().any(|o| o.class == "lungs")).count();
        let xrays = data.images.iter().filter(|i| i.modality == "xray").count();
        assert!(xrays > 0 && xrays_with_lungs == xrays, "{xrays_with_lungs} of {xrays} chest X-rays have lungs");
        assert!(data.classes()["lungs"].contains(&"xray".to_string()));
        // So no evaluation question asks for the lungs on a chest X-ray expecting "not found".
        assert!(data.all_classes().unwrap()["lungs"].contains(&"xray".to_string()));
    }
}
