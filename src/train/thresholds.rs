//! The content head's per-class thresholds, calibrated after training on training images the
//! heads never saw. The head fitted its own images, and on new ones some classes score lower
//! than even odds although they are plainly there (fetal heads on some ultrasound images:
//! 0.1–0.4, so "not found"), while the images of other modalities score far below. Each class
//! with enough held-out images on both sides moves its threshold into the gap that best
//! separates the images showing it from the rest (balanced accuracy, then the middle of the
//! gap), and keeps even odds where that is already as good.
//!
//! The place head's maps are calibrated here too: how many cells above even odds a class's map
//! needs before it says the image shows the class where the content head does not.

use burn::tensor::Device;

use super::cache::EmbeddingCache;
use super::dataset::ImageItem;
use crate::ask::sigmoid;
use crate::error::Result;
use crate::reason::heads::{ContentHead, PlaceHead};
use crate::segment::read_f32;

/// A class moves its threshold only with at least this many held-out images showing it and as
/// many not showing it.
pub const MIN_IMAGES_PER_SIDE: usize = 4;

/// The logit threshold for one class from the uncalibrated logits of held-out images that show
/// it (`shown`) and that do not (`not_shown`): 0 unless another cut separates them better (by
/// balanced accuracy), then the middle of the best such gap between two neighbouring logits
/// (the one nearest 0 among equals).
pub fn threshold(shown: &[f32], not_shown: &[f32]) -> f32 {
    if shown.len() < MIN_IMAGES_PER_SIDE || not_shown.len() < MIN_IMAGES_PER_SIDE {
        return 0.0;
    }
    let balanced_accuracy = |cut: f32| {
        let (found, rejected) = rates(shown, not_shown, cut);
        (found + rejected) / 2.0
    };
    let mut scores: Vec<f32> = shown.iter().chain(not_shown).copied().collect();
    scores.sort_by(f32::total_cmp);
    scores.dedup();
    let mut best = (balanced_accuracy(0.0), 0.0_f32);
    for gap in scores.windows(2) {
        let cut = (gap[0] + gap[1]) / 2.0;
        let accuracy = balanced_accuracy(cut);
        // Ties with even odds keep 0 (no cut is nearer it).
        if accuracy > best.0 + 1e-9 || ((accuracy - best.0).abs() <= 1e-9 && cut.abs() < best.1.abs()) {
            best = (accuracy, cut);
        }
    }
    best.1
}

/// The shares of `shown` logits above `cut` (found) and of `not_shown` ones at or below it
/// (rejected).
fn rates(shown: &[f32], not_shown: &[f32], cut: f32) -> (f64, f64) {
    let share = |n: usize, of: &[f32]| n as f64 / of.len().max(1) as f64;
    (share(shown.iter().filter(|&&s| s > cut).count(), shown), share(not_shown.iter().filter(|&&s| s <= cut).count(), not_shown))
}

/// One class's calibration: its scores on the held-out images that show it and on those that
/// do not, and the value chosen from them (a content threshold, or a place-map count).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassCalibration {
    pub class: String,
    pub value: f32,
    pub shown: Vec<f32>,
    pub not_shown: Vec<f32>,
}

impl ClassCalibration {
    /// A content threshold's line for the log.
    pub fn describe_threshold(&self) -> String {
        let (found_before, rejected_before) = rates(&self.shown, &self.not_shown, 0.0);
        let (found, rejected) = rates(&self.shown, &self.not_shown, self.value);
        format!(
            "{:<28} {:>4} {:>4}  threshold {:>6.2} (p {:.3})  shown found {:.3} -> {:.3}, others rejected {:.3} -> {:.3}",
            self.class,
            self.shown.len(),
            self.not_shown.len(),
            self.value,
            sigmoid(self.value),
            found_before,
            found,
            rejected_before,
            rejected
        )
    }

    /// A place-map count's line for the log.
    pub fn describe_cells(&self) -> String {
        let reached = self.shown.iter().filter(|&&n| self.value > 0.0 && n >= self.value).count();
        let highest_without = self.not_shown.iter().copied().fold(0.0, f32::max);
        let read = if self.value > 0.0 { format!("{:>6.0} cells", self.value) } else { "  not read".to_string() };
        format!(
            "{:<28} {:>4} {:>4}  {read}  shown reaching it {reached}/{}, most cells without {highest_without:.0}",
            self.class,
            self.shown.len(),
            self.not_shown.len(),
            self.shown.len()
        )
    }
}

/// Every class's calibration from `images`: `score` gives an image's score for every class, and
/// `choose` picks each class's value from its scores on the images that show it and do not.
fn calibrate_per_class(
    images: &[&ImageItem],
    class_names: &[String],
    mut score: impl FnMut(&ImageItem) -> Result<Vec<f32>>,
    choose: fn(&[f32], &[f32]) -> f32,
) -> Result<Vec<ClassCalibration>> {
    let mut choices: Vec<ClassCalibration> =
        class_names.iter().map(|class| ClassCalibration { class: class.clone(), value: 0.0, shown: Vec::new(), not_shown: Vec::new() }).collect();
    for item in images {
        for ((choice, value), shown) in choices.iter_mut().zip(score(item)?).zip(item.shown(class_names)) {
            if shown > 0.0 {
                choice.shown.push(value);
            } else {
                choice.not_shown.push(value);
            }
        }
    }
    for choice in &mut choices {
        choice.value = choose(&choice.shown, &choice.not_shown);
    }
    Ok(choices)
}

/// Chooses every class's threshold from the uncalibrated content logits of `images`.
pub fn content_thresholds(content: &ContentHead, images: &[&ImageItem], cache: &EmbeddingCache, class_names: &[String], device: &Device) -> Result<Vec<ClassCalibration>> {
    let logits = |item: &ImageItem| futures_lite::future::block_on(read_f32(content.uncalibrated(cache.load(item, device)?)));
    calibrate_per_class(images, class_names, logits, threshold)
}

/// A class's place map is read as presence at this many times the most cells above even odds
/// that its map reached on any held-out image without the class…
pub const PRESENCE_CELLS_MARGIN: f32 = 2.0;
/// …and at no fewer than this many cells (a stray spot is no evidence of a structure).
pub const MIN_PRESENCE_CELLS: f32 = 20.0;

/// The count of place-map cells above even odds at which a class's map says the image shows it
/// (even odds; [`crate::reason::heads::PlaceHead::presence_cells`]), from the counts on held-out
/// images that show the class (`shown`) and that do not (`not_shown`): a margin above the most
/// any image without the class reached, so that the map only adds presence the held-out images
/// never contradict; 0 (not read) with too few images on a side, or where no image showing the
/// class reaches it.
pub fn presence_cells(shown: &[f32], not_shown: &[f32]) -> f32 {
    if shown.len() < MIN_IMAGES_PER_SIDE || not_shown.len() < MIN_IMAGES_PER_SIDE {
        return 0.0;
    }
    let highest_without = not_shown.iter().copied().fold(0.0, f32::max);
    let cells = (highest_without * PRESENCE_CELLS_MARGIN).max(MIN_PRESENCE_CELLS);
    if shown.iter().any(|&n| n >= cells) {
        cells
    } else {
        0.0
    }
}

/// Chooses every class's place-map count from the maps of `images`.
pub fn place_presence_cells(place: &PlaceHead, images: &[&ImageItem], cache: &EmbeddingCache, class_names: &[String], device: &Device) -> Result<Vec<ClassCalibration>> {
    let counts = |item: &ImageItem| {
        let maps = place.forward(cache.load(item, device)?);
        let [_, classes, _] = maps.dims();
        futures_lite::future::block_on(read_f32(maps.greater_elem(0.0).float().sum_dim(2).reshape([classes])))
    };
    calibrate_per_class(images, class_names, counts, presence_cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each class's scores are split by whether the image shows the class, and its value is
    /// chosen from its own scores only.
    #[test]
    fn each_class_is_calibrated_on_the_images_that_show_it_and_those_that_do_not() {
        let classes = vec!["heart".to_string(), "liver".to_string()];
        let chest = ImageItem::fixture("jsrt", "xray", &["heart"]);
        let abdomen = ImageItem::fixture("chaos", "ct", &["liver"]);
        let score = |item: &ImageItem| Ok(if item.modality == "xray" { vec![5.0, -3.0] } else { vec![-4.0, 6.0] });
        let choose = |shown: &[f32], not_shown: &[f32]| shown.iter().sum::<f32>() * 10.0 + not_shown.iter().sum::<f32>();
        let calibrated = calibrate_per_class(&[&chest, &abdomen, &chest], &classes, score, choose).unwrap();
        assert_eq!((calibrated[0].shown.clone(), calibrated[0].not_shown.clone(), calibrated[0].value), (vec![5.0, 5.0], vec![-4.0], 96.0));
        assert_eq!((calibrated[1].shown.clone(), calibrated[1].not_shown.clone(), calibrated[1].value), (vec![6.0], vec![-3.0, -3.0], 54.0));
    }

    #[test]
    fn a_map_is_read_as_presence_above_twice_what_images_without_the_class_reach() {
        // Images without the class reach at most 160 cells; two of five showing it reach 320.
        let cells = presence_cells(&[700.0, 576.0, 300.0, 10.0, 0.0], &[0.0, 12.0, 160.0, 3.0]);
        assert_eq!(cells, 320.0);
        // No image showing the class reaches twice 160: the map is not read.
        assert_eq!(presence_cells(&[300.0, 310.0, 200.0, 250.0], &[0.0, 12.0, 160.0, 3.0]), 0.0);
        // Images without the class all empty: a stray spot is still no evidence.
        assert_eq!(presence_cells(&[700.0, 15.0, 30.0, 900.0], &[0.0, 0.0, 0.0, 0.0]), MIN_PRESENCE_CELLS);
    }

    #[test]
    fn a_map_is_not_read_as_presence_with_too_few_held_out_images() {
        assert_eq!(presence_cells(&[700.0, 800.0, 900.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
        assert_eq!(presence_cells(&[700.0, 800.0, 900.0, 900.0], &[0.0, 0.0, 0.0]), 0.0);
    }

    #[test]
    fn a_class_already_separated_at_even_odds_keeps_them() {
        assert_eq!(threshold(&[2.0, 3.0, 4.0, 5.0], &[-6.0, -5.0, -4.0, -3.0, -7.0]), 0.0);
    }

    #[test]
    fn shown_images_below_even_odds_move_the_threshold_into_the_gap() {
        // Two of five shown images score below 0, every other image far below them.
        let cut = threshold(&[-1.5, -1.0, 2.0, 3.0, 4.0], &[-8.0, -7.0, -6.0, -5.5, -5.0]);
        assert_eq!(cut, (-5.0 + -1.5) / 2.0);
    }

    #[test]
    fn images_without_the_class_above_even_odds_raise_it() {
        let cut = threshold(&[4.0, 5.0, 6.0, 7.0], &[-3.0, -2.0, 1.0, 2.0]);
        assert_eq!(cut, 3.0);
    }

    #[test]
    fn too_few_images_on_a_side_keep_even_odds() {
        assert_eq!(threshold(&[-2.0, -1.5, -1.0], &[-8.0, -7.0, -6.0, -5.0]), 0.0);
    }

    #[test]
    fn an_overlap_moves_only_for_a_better_balance() {
        // The cut below -1 finds all five shown images and rejects four of five others, against
        // three and four at 0: 0.9 against 0.7.
        let cut = threshold(&[-1.0, -0.5, 1.0, 2.0, 3.0], &[-4.0, -3.0, -2.0, -1.5, 0.5]);
        assert_eq!(cut, -1.25);
    }
}
