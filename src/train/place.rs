//! Training of the place head ([`crate::reason::heads::PlaceHead`]): where each structure lies,
//! learned from the cached image embeddings and the ground-truth masks alone — no question, no
//! LLM, no mask decoder — so it takes minutes, not hours.
//!
//! Each training image supervises the map of every class its data set annotates: the class's
//! coarse mask where the image has one, an empty map where it does not (a cardiac MRI slice
//! without a right ventricle). Classes of other data sets are not supervised on it: their maps
//! are only read when the question asks for them, and presence has answered "not found" then.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};

use super::cache::EmbeddingCache;
use super::dataset::{Dataset, ImageItem};
use super::targets::Targets;
use crate::error::Result;
use crate::reason::heads::PlaceHead;
use crate::rng::SplitMix64;

const CELLS: usize = 64 * 64;

#[derive(Debug, Clone)]
pub struct PlaceConfig {
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

/// One image's supervised class rows and their 64×64 coarse masks (all zero: annotated absent).
struct ImageTargets {
    rows: Vec<(usize, Vec<f32>)>,
}

/// The class rows each data set annotates.
fn annotated_rows(data: &Dataset, class_names: &[String]) -> BTreeMap<String, BTreeSet<usize>> {
    let mut out: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for record in data.images.iter().flat_map(|i| &i.objects) {
        if let Some(row) = class_names.iter().position(|c| *c == record.class) {
            out.entry(record.set.clone()).or_default().insert(row);
        }
    }
    out
}

fn image_targets(data: &Dataset, item: &ImageItem, annotated: &BTreeMap<String, BTreeSet<usize>>, class_names: &[String]) -> Result<ImageTargets> {
    let set = item.id.split('/').next().unwrap_or_default();
    let mut rows = Vec::new();
    for &row in annotated.get(set).into_iter().flatten() {
        let coarse = match item.objects.iter().find(|o| o.class == class_names[row]) {
            Some(record) => Targets::load(&data.root, record)?.coarse_mask,
            None => vec![0.0; CELLS],
        };
        rows.push((row, coarse));
    }
    Ok(ImageTargets { rows })
}

/// Masked BCE over the supervised maps plus half their Dice (on maps with a target), as in the
/// similarity map's loss. `logits`, `targets`: `[B, classes, cells]`; `weights`: `[B, classes, 1]`,
/// 1 on supervised rows; `has_target`: the same, 1 where the target is not empty.
fn place_loss(logits: Tensor<3>, targets: Tensor<3>, weights: Tensor<3>, has_target: Tensor<3>) -> Tensor<1> {
    let rows = weights.clone().sum();
    let bce = -(targets.clone() * log_sigmoid(logits.clone()) + (-targets.clone() + 1.0) * log_sigmoid(-logits.clone()));
    let bce = (bce.mean_dim(2) * weights).sum() / rows.clone();
    let p = sigmoid(logits);
    let inter = (p.clone() * targets.clone()).sum_dim(2);
    let dice = -((inter * 2.0 + 1.0) / (p.sum_dim(2) + targets.sum_dim(2) + 1.0)) + 1.0;
    bce + (dice * has_target).sum() / rows * 0.5
}

/// Trains `head` (on an autodiff device) over `images` for `config.epochs` epochs.
pub fn train_place(
    head: PlaceHead,
    data: &Dataset,
    images: &[&ImageItem],
    cache: &EmbeddingCache,
    class_names: &[String],
    config: &PlaceConfig,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<PlaceHead> {
    let annotated = annotated_rows(data, class_names);
    let targets: Vec<ImageTargets> = images.iter().map(|item| image_targets(data, item, &annotated, class_names)).collect::<Result<_>>()?;
    let classes = class_names.len();
    let mut head = head;
    let mut optim = AdamWConfig::new().with_weight_decay(1e-2).init();
    let started = Instant::now();
    for epoch in 0..config.epochs {
        let mut order: Vec<usize> = (0..images.len()).collect();
        let mut rng = SplitMix64::new(config.seed ^ 0x91ace ^ epoch as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut total = 0.0;
        for batch in order.chunks(config.batch) {
            let b = batch.len();
            let embeddings = batch.iter().map(|&i| cache.load(images[i], device)).collect::<Result<Vec<_>>>()?;
            let mut dense = vec![0.0f32; b * classes * CELLS];
            let mut weights = vec![0.0f32; b * classes];
            let mut has_target = vec![0.0f32; b * classes];
            for (k, &i) in batch.iter().enumerate() {
                for (row, coarse) in &targets[i].rows {
                    let at = k * classes + row;
                    dense[at * CELLS..(at + 1) * CELLS].copy_from_slice(coarse);
                    weights[at] = 1.0;
                    has_target[at] = if coarse.iter().any(|&v| v > 0.0) { 1.0 } else { 0.0 };
                }
            }
            let tensor = |values: Vec<f32>, shape: [usize; 3]| Tensor::<3>::from_data(TensorData::new(values, shape), device);
            let loss = place_loss(
                head.forward(Tensor::cat(embeddings, 0)),
                tensor(dense, [b, classes, CELLS]),
                tensor(weights, [b, classes, 1]),
                tensor(has_target, [b, classes, 1]),
            );
            total += loss.clone().into_scalar::<f32>() * b as f32;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(config.learning_rate, head, grads);
        }
        log(&format!(
            "place epoch {}/{} loss {:.4} ({:.0} s)",
            epoch + 1,
            config.epochs,
            total / images.len() as f32,
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

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
