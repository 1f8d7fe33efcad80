//! Training of the place head ([`crate::reason::heads::PlaceHead`]): where each structure lies,
//! learned from the cached image embeddings and the ground-truth masks alone — no question, no
//! LLM, no mask decoder — so it takes minutes, not hours, and can learn from more images than
//! the question phases (`--place-images-per-set`: up to 240 per data set — with this data every
//! training image but the calibration's held-out ones, 809 images — against their 20). With 60
//! per set instead of 20 the map box's mask IoU on the calibration's held-out images rose on
//! every large set (fetal heads 0.777 → 0.815, the heart 0.598 → 0.629, the liver 0.735 →
//! 0.754); with 240, fetal heads 0.843 → 0.868 and the clavicles' map box IoU 0.55–0.58 →
//! 0.64–0.66 (the dilated head, fine-tuned).
//! The content head stays with the refit: trained here on the same images with a plain
//! multi-label BCE, it found fewer structures on new CT slices (evaluation: 91.5 % of present
//! targets found, against 95.6 %).
//!
//! Each training image supervises the map of every class its data set annotates: the class's
//! coarse mask where the image has one, an empty map where it does not (a cardiac MRI slice
//! without a right ventricle). It also supervises an empty map for every class that cannot be in
//! it: one that no data set of its modality annotates (no heart in a fundus photograph), or of a
//! body region (the knowledge table's) that none of its data set's classes is in (no fetal head
//! on a carotid ultrasound, no prostate on a cardiac MRI slice). So a class's map says whether
//! the image shows it at all, and presence can read it
//! ([`crate::reason::heads::PlaceHead::presence_cells`]). Without these rows the fetal-head map
//! had 590–920 cells above even odds on prostate MRI slices; with the modality rows alone, of the
//! 6,572 (validation image, class of another modality) pairs, 74 rather than 2,500 had 20 or
//! more, but the fetal-head map still covered up to 830 cells of carotid ultrasound images.
//! Other data sets' classes of the same modality and region stay unsupervised on the image: the
//! data cannot say whether they are absent (a liver on a spleen CT slice is there, unannotated).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};

use super::cache::EmbeddingCache;
use super::dataset::{Dataset, ImageItem};
use super::targets::Targets;
use super::trainer::learning_rate;
use crate::error::Result;
use crate::reason::heads::PlaceHead;
use crate::reason::knowledge::Knowledge;
use crate::rng::SplitMix64;

const CELLS: usize = 64 * 64;

#[derive(Debug, Clone)]
pub struct PlaceConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Peak of the cosine schedule (as the question phase's).
    pub learning_rate: f64,
    pub seed: u64,
}

/// One image's supervised class rows, their 64×64 coarse masks (all zero: annotated absent), and
/// whether the row is one of its data set's classes (else: a class that cannot be in it).
struct ImageTargets {
    rows: Vec<(usize, Vec<f32>, bool)>,
}

/// The class rows each data set annotates, and where each class can be seen: the modalities it
/// occurs in (`classes.json`, test-only classes included) and its body region (the knowledge
/// table).
struct Annotated {
    by_set: BTreeMap<String, BTreeSet<usize>>,
    modalities: Vec<Vec<String>>,
    regions: Vec<String>,
}

impl Annotated {
    fn new(data: &Dataset, class_names: &[String]) -> Result<Self> {
        let mut by_set: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for record in data.images.iter().flat_map(|i| &i.objects) {
            if let Some(row) = class_names.iter().position(|c| *c == record.class) {
                by_set.entry(record.set.clone()).or_default().insert(row);
            }
        }
        let all = data.all_classes()?;
        let modalities = class_names.iter().map(|class| all.get(class).cloned().unwrap_or_default()).collect();
        let knowledge = Knowledge::load()?;
        let regions = class_names.iter().map(|class| knowledge.structure(class).map(|s| s.entry.region).unwrap_or_default()).collect();
        Ok(Self { by_set, modalities, regions })
    }

    /// The rows `item` supervises: its data set's classes (`true`), then every class that cannot
    /// be in it (`false`: always empty) — known only in other modalities, or of a body region
    /// none of its data set's classes is in.
    fn rows(&self, item: &ImageItem) -> Vec<(usize, bool)> {
        let set = item.objects.first().map(|record| record.set.as_str()).unwrap_or_default();
        let own: Vec<usize> = self.by_set.get(set).into_iter().flatten().copied().collect();
        let own_regions: BTreeSet<&str> = own.iter().map(|&row| self.regions[row].as_str()).collect();
        let impossible = |row: usize| {
            let modalities = &self.modalities[row];
            let other_modality = !modalities.is_empty() && !modalities.contains(&item.modality);
            let other_region = !self.regions[row].is_empty() && !own_regions.contains(self.regions[row].as_str());
            other_modality || other_region
        };
        let foreign = (0..self.regions.len()).filter(|&row| impossible(row));
        own.iter().map(|&row| (row, true)).chain(foreign.map(|row| (row, false))).collect()
    }
}

fn image_targets(data: &Dataset, item: &ImageItem, annotated: &Annotated, class_names: &[String]) -> Result<ImageTargets> {
    let mut rows = Vec::new();
    for (row, own_set) in annotated.rows(item) {
        let record = item.objects.iter().find(|o| own_set && o.class == class_names[row]);
        let coarse = match record {
            Some(record) => Targets::load(&data.root, record)?.coarse_mask,
            None => vec![0.0; CELLS],
        };
        rows.push((row, coarse, own_set));
    }
    Ok(ImageTargets { rows })
}

/// Masked BCE over the supervised maps plus half their Dice (on maps with a target), as in the
/// similarity map's loss. `logits`, `targets`: `[B, classes, cells]`; `weights`: `[B, classes, 1]`,
/// the weight of each supervised row, 0 elsewhere (the weighted sums are divided by their sum);
/// `has_target`: 1 where the target is not empty.
fn place_loss(logits: Tensor<3>, targets: Tensor<3>, weights: Tensor<3>, has_target: Tensor<3>) -> Tensor<1> {
    let rows = weights.clone().sum().clamp_min(1.0);
    let bce = -(targets.clone() * log_sigmoid(logits.clone()) + (-targets.clone() + 1.0) * log_sigmoid(-logits.clone()));
    let bce = (bce.mean_dim(2) * weights).sum() / rows.clone();
    let p = sigmoid(logits);
    let inter = (p.clone() * targets.clone()).sum_dim(2);
    let dice = -((inter * 2.0 + 1.0) / (p.sum_dim(2) + targets.sum_dim(2) + 1.0)) + 1.0;
    bce + (dice * has_target).sum() / rows * 0.5
}

/// The weight of an empty row for a class that cannot be in the image, against 1 for a row of
/// its data set's classes. An image has one to five own rows and some sixty such empty ones.
/// Weighed alike (1), the empty rows made the maps shy: the small sets' map boxes shrank (box
/// Acc@0.5 0.827 → 0.793 in the evaluation; the carotid, glands, glioma, nuclei among the
/// losses) while three missed fetal heads were found. Weighed as one group as heavy as the own
/// rows, they taught too little: the fetal-head map still covered 802 cells of a held-out image
/// without one, and presence could not read it.
const IMPOSSIBLE_ROW_WEIGHT: f32 = 0.25;

/// Images with their supervised maps.
struct Supervised<'a> {
    images: Vec<&'a ImageItem>,
    targets: Vec<ImageTargets>,
}

impl<'a> Supervised<'a> {
    fn new(data: &Dataset, images: &[&'a ImageItem], annotated: &Annotated, class_names: &[String]) -> Result<Self> {
        let targets = images.iter().map(|item| image_targets(data, item, annotated, class_names)).collect::<Result<_>>()?;
        Ok(Self { images: images.to_vec(), targets })
    }

    /// The loss of `head` on the images at `batch`: the weighted mean over the supervised rows,
    /// the empty rows of classes that cannot be in the images weighing [`IMPOSSIBLE_ROW_WEIGHT`].
    fn loss(&self, head: &PlaceHead, batch: &[usize], classes: usize, cache: &EmbeddingCache, device: &Device) -> Result<Tensor<1>> {
        let b = batch.len();
        let embeddings = batch.iter().map(|&i| cache.load(self.images[i], device)).collect::<Result<Vec<_>>>()?;
        let mut dense = vec![0.0f32; b * classes * CELLS];
        let mut weights = vec![0.0f32; b * classes];
        let mut has_target = vec![0.0f32; b * classes];
        for (k, &i) in batch.iter().enumerate() {
            for (row, coarse, own_row) in &self.targets[i].rows {
                let at = k * classes + row;
                dense[at * CELLS..(at + 1) * CELLS].copy_from_slice(coarse);
                weights[at] = if *own_row { 1.0 } else { IMPOSSIBLE_ROW_WEIGHT };
                has_target[at] = if coarse.iter().any(|&v| v > 0.0) { 1.0 } else { 0.0 };
            }
        }
        let tensor = |values: Vec<f32>, shape: [usize; 3]| Tensor::<3>::from_data(TensorData::new(values, shape), device);
        Ok(place_loss(
            head.forward(Tensor::cat(embeddings, 0)),
            tensor(dense, [b, classes, CELLS]),
            tensor(weights, [b, classes, 1]),
            tensor(has_target, [b, classes, 1]),
        ))
    }
}

/// One epoch of the place phase: mean loss per image on the training images and on held-out
/// ones (`None` without any), and the seconds since the phase began.
#[derive(Debug, Clone, Copy)]
pub struct PlaceEpoch {
    pub train_loss: f32,
    pub held_out_loss: Option<f32>,
    pub seconds: f64,
}

/// Trains `head` (on an autodiff device) over `images` for `config.epochs` epochs, measuring the
/// loss on `held_out` images after each.
#[allow(clippy::too_many_arguments)]
pub fn train_place(
    head: PlaceHead,
    data: &Dataset,
    images: &[&ImageItem],
    held_out: &[&ImageItem],
    cache: &EmbeddingCache,
    class_names: &[String],
    config: &PlaceConfig,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<(PlaceHead, Vec<PlaceEpoch>)> {
    let annotated = Annotated::new(data, class_names)?;
    let train = Supervised::new(data, images, &annotated, class_names)?;
    let held_out = Supervised::new(data, held_out, &annotated, class_names)?;
    let classes = class_names.len();
    let mut head = head;
    let mut optim = AdamWConfig::new().with_weight_decay(1e-2).init();
    let mut curve = Vec::new();
    let steps = config.epochs * images.len().div_ceil(config.batch);
    let mut step = 0;
    let started = Instant::now();
    for epoch in 0..config.epochs {
        let mut order: Vec<usize> = (0..images.len()).collect();
        let mut rng = SplitMix64::new(config.seed ^ 0x91ace ^ epoch as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut total = 0.0;
        for batch in order.chunks(config.batch) {
            let loss = train.loss(&head, batch, classes, cache, device)?;
            total += loss.clone().into_scalar::<f32>() * batch.len() as f32;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(learning_rate(config.learning_rate, step, steps), head, grads);
            step += 1;
        }
        let held_out_loss = if held_out.images.is_empty() {
            None
        } else {
            let frozen = head.clone().no_grad();
            let indices: Vec<usize> = (0..held_out.images.len()).collect();
            let mut sum = 0.0;
            for batch in indices.chunks(config.batch) {
                sum += held_out.loss(&frozen, batch, classes, cache, device)?.into_scalar::<f32>() * batch.len() as f32;
            }
            Some(sum / indices.len() as f32)
        };
        let point = PlaceEpoch { train_loss: total / images.len() as f32, held_out_loss, seconds: started.elapsed().as_secs_f64() };
        log(&format!(
            "place epoch {}/{} loss {:.4}, held out {} ({:.0} s)",
            epoch + 1,
            config.epochs,
            point.train_loss,
            held_out_loss.map_or("-".to_string(), |l| format!("{l:.4}")),
            point.seconds
        ));
        curve.push(point);
    }
    Ok((head, curve))
}

/// The place phase's curve as CSV: epoch, training loss, held-out loss (empty without), seconds.
pub fn curve_csv(curve: &[PlaceEpoch]) -> String {
    let mut text = String::from("epoch,train_loss,held_out_loss,seconds\n");
    for (epoch, point) in curve.iter().enumerate() {
        let held_out = point.held_out_loss.map_or(String::new(), |l| format!("{l:.5}"));
        text.push_str(&format!("{},{:.5},{held_out},{:.1}\n", epoch + 1, point.train_loss, point.seconds));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image supervises its own data set's classes, and an empty map for classes of other
    /// modalities or other body regions; classes of the same modality and region in other data
    /// sets stay unsupervised (they may be there, unannotated).
    #[test]
    fn an_image_supervises_empty_maps_only_for_classes_that_cannot_be_in_it() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Rows: fetal head (ultrasound, womb), carotid (ultrasound, neck), liver (CT, trunk),
        // spleen (CT, trunk), a class with no known modality or region.
        let annotated = Annotated {
            by_set: BTreeMap::from([("hc18".to_string(), BTreeSet::from([0])), ("ccaus".to_string(), BTreeSet::from([1])), ("chaos".to_string(), BTreeSet::from([2])), ("spleen".to_string(), BTreeSet::from([3]))]),
            modalities: vec![strings(&["ultrasound"]), strings(&["ultrasound"]), strings(&["ct"]), strings(&["ct"]), Vec::new()],
            regions: strings(&["womb", "neck", "trunk", "trunk", ""]),
        };
        assert_eq!(annotated.rows(&ImageItem::fixture("hc18", "ultrasound", &["fetal_head"])), vec![(0, true), (1, false), (2, false), (3, false)]);
        assert_eq!(annotated.rows(&ImageItem::fixture("ccaus", "ultrasound", &["common_carotid_artery"])), vec![(1, true), (0, false), (2, false), (3, false)]);
        assert_eq!(annotated.rows(&ImageItem::fixture("spleen", "ct", &["spleen"])), vec![(3, true), (0, false), (1, false)]);
    }

    /// The loss only counts supervised rows: a wrong map on an unsupervised row costs nothing,
    /// the same wrong map on a supervised one does.
    #[test]
    fn unsupervised_rows_cost_nothing() {
        let device = Device::flex();
        let t = |v: Vec<f32>, shape: [usize; 3]| Tensor::<3>::from_data(TensorData::new(v, shape), &device);
        // One image, two classes, 4 cells: row 0's target is cells 0–1; the logits match it.
        let target = vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let good = vec![9.0, 9.0, -9.0, -9.0, 9.0, 9.0, 9.0, 9.0]; // row 1 says "everywhere"
        let only_row0 = place_loss(t(good.clone(), [1, 2, 4]), t(target.clone(), [1, 2, 4]), t(vec![1.0, 0.0], [1, 2, 1]), t(vec![1.0, 0.0], [1, 2, 1]));
        assert!(only_row0.into_scalar::<f32>() < 0.01);
        let both = place_loss(t(good, [1, 2, 4]), t(target, [1, 2, 4]), t(vec![1.0, 1.0], [1, 2, 1]), t(vec![1.0, 0.0], [1, 2, 1]));
        assert!(both.into_scalar::<f32>() > 1.0);
    }
}
