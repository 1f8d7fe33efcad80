//! Small trained heads on the fused states: the similarity map ("where the model looked"), the
//! box, the prompt token for SAM's mask decoder, the class of the structure asked for (which
//! grounds the explanation in the knowledge table), what the image contains (which, with the
//! class, gives the presence score: "not found") and where each structure lies in it (the place
//! maps, whose box can prompt the mask decoder).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Int, Tensor};

use crate::sam::common::Mlp;

/// The similarity map as a cosine ("where the model looked") and as mask logits.
#[derive(Debug, Clone)]
pub struct Similarity {
    /// `[B, H, W]` in [-1, 1].
    pub cosine: Tensor<3>,
    /// `[B, H, W]`: `scale · cosine + bias`, supervised by the down-sampled mask.
    pub logits: Tensor<3>,
}

/// Cosine similarity between a projection of the fused seg state and a projection of every
/// embedding cell. The cell projection lets a 1×1 layer pick the channels that tell structures
/// apart; the learned scale and bias turn the cosine into a coarse mask.
#[derive(Module, Debug)]
pub struct SimilarityHead {
    pub query: Linear,
    pub key: Linear,
    pub logit_scale: Param<Tensor<1>>,
    pub logit_bias: Param<Tensor<1>>,
}

impl SimilarityHead {
    pub fn new(dim: usize, embedding_channels: usize, device: &Device) -> Self {
        Self {
            query: LinearConfig::new(dim, embedding_channels).init(device),
            key: LinearConfig::new(embedding_channels, embedding_channels).init(device),
            logit_scale: Param::from_tensor(Tensor::from_floats([10.0], device)),
            logit_bias: Param::from_tensor(Tensor::from_floats([-2.0], device)),
        }
    }

    /// `fused`: `[B, D]`, `embedding`: `[B, C, H, W]`.
    pub fn forward(&self, fused: Tensor<2>, embedding: Tensor<4>) -> Similarity {
        let [b, c, h, w] = embedding.dims();
        let query = unit_rows(self.query.forward(fused));
        let cells = self.key.forward(embedding.reshape([b, c, h * w]).swap_dims(1, 2));
        let cells = unit_rows(cells.reshape([b * h * w, c])).reshape([b, h * w, c]);
        let cosine = cells.matmul(query.unsqueeze_dim::<3>(2)).reshape([b, h, w]);
        let logits = cosine.clone() * self.logit_scale.val().reshape([1, 1, 1]) + self.logit_bias.val().reshape([1, 1, 1]);
        Similarity { cosine, logits }
    }
}

fn unit_rows(x: Tensor<2>) -> Tensor<2> {
    x.clone() / (x.square().sum_dim(1).sqrt() + 1e-6)
}

/// Number of summary features [`map_features`] gives.
pub const MAP_FEATURES: usize = 6;

/// What the coarse mask says about the target, per sample `[B, 6]`: the box of its moments
/// (cx, cy, w, h with w = √(12·var), exact for a filled rectangle), its mean and its peak. The
/// moments weigh each cell by p⁴: otherwise thousands of background cells at p ≈ 0.1 outweigh a
/// target of a few hundred cells and the box covers the whole image.
pub fn map_features(logits: Tensor<3>) -> Tensor<2> {
    let [b, h, w] = logits.dims();
    let device = logits.device();
    let p = sigmoid(logits.clone());
    let weight = p.clone().square().square();
    let mass = weight.clone().sum_dim(2).sum_dim(1).reshape([b, 1]) + 1e-6;
    let centres = |n: usize| {
        let values: Vec<f32> = (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect();
        Tensor::<1>::from_floats(values.as_slice(), &device)
    };
    let xs = centres(w).reshape([1, 1, w]);
    let ys = centres(h).reshape([1, h, 1]);
    let moment = |values: Tensor<3>| values.sum_dim(2).sum_dim(1).reshape([b, 1]) / mass.clone();
    let cx = moment(weight.clone() * xs.clone());
    let cy = moment(weight.clone() * ys.clone());
    let var_x = moment(weight.clone() * (xs - cx.clone().reshape([b, 1, 1])).square());
    let var_y = moment(weight * (ys - cy.clone().reshape([b, 1, 1])).square());
    let width = (var_x * 12.0 + 1e-6).sqrt();
    let height = (var_y * 12.0 + 1e-6).sqrt();
    let mean = p.sum_dim(2).sum_dim(1).reshape([b, 1]) / (h * w) as f64;
    let peak = logits.reshape([b, h * w]).max_dim(1) / 10.0;
    Tensor::cat(vec![cx, cy, width, height, mean, peak], 1)
}

/// The box: an anchor — the mean training box of each class, weighted by the class head's
/// probabilities — corrected by an MLP that reads the fused box state and what the similarity map
/// found → sigmoid (cx, cy, w, h), normalised to the padded model input. The anchor alone is where
/// such a structure usually lies; the correction is what this image adds.
#[derive(Module, Debug)]
pub struct BoxHead {
    pub mlp: Mlp,
    /// `[classes, 4]` (cx, cy, w, h): statistics of the training data, set by the trainer.
    pub anchors: Param<Tensor<2>>,
}

impl BoxHead {
    pub fn new(dim: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        let head = Self {
            mlp: Mlp::new(dim + MAP_FEATURES, hidden, 4, 3, device),
            anchors: Param::from_tensor(Tensor::full([classes, 4], 0.5, device)).set_require_grad(false),
        };
        // A fresh head answers with the anchor.
        head.without_correction()
    }

    /// The head with its correction reset to zero (it answers with the anchor).
    pub fn without_correction(mut self) -> Self {
        let last = self.mlp.layers.last_mut().expect("three layers");
        last.weight = Param::from_tensor(last.weight.val().zeros_like());
        last.bias = last.bias.as_ref().map(|b| Param::from_tensor(b.val().zeros_like()));
        self
    }

    /// Where the structure usually lies: `class_probs` `[B, classes]` → `[B, 4]`.
    pub fn anchor(&self, class_probs: Tensor<2>) -> Tensor<2> {
        class_probs.matmul(self.anchors.val()).clamp(1e-3, 1.0 - 1e-3)
    }

    /// The usual place of one class per row: `classes` `[B]` → `[B, 4]`.
    pub fn anchor_of(&self, classes: Tensor<1, Int>) -> Tensor<2> {
        self.anchors.val().select(0, classes).clamp(1e-3, 1.0 - 1e-3)
    }

    /// The anchor corrected for this image: `fused`: `[B, D]`, `map`: [`map_features`],
    /// `anchor`: [`Self::anchor`] → `[B, 4]`.
    pub fn forward(&self, fused: Tensor<2>, map: Tensor<2>, anchor: Tensor<2>) -> Tensor<2> {
        sigmoid(logit(anchor) + self.mlp.forward(Tensor::cat(vec![fused, map], 1)))
    }
}

/// `[B, 4]` (cx, cy, w, h) in [0, 1] → `[B, 4]` (x0, y0, x1, y1) in model input pixels.
pub fn cxcywh_to_xyxy(boxes: Tensor<2>, size: f64) -> Tensor<2> {
    let centre = boxes.clone().narrow(1, 0, 2);
    let half = boxes.narrow(1, 2, 2) / 2.0;
    Tensor::cat(vec![centre.clone() - half.clone(), centre + half], 1) * size
}

/// Linear–ReLU–Linear from the LLM width to SAM's prompt width (MediSee's `text_hidden_fcs`).
#[derive(Module, Debug)]
pub struct SegPrompt {
    pub mlp: Mlp,
}

impl SegPrompt {
    pub fn new(dim: usize, prompt_dim: usize, device: &Device) -> Self {
        Self { mlp: Mlp::new(dim, dim, prompt_dim, 2, device) }
    }

    /// `[B, D]` → one extra sparse prompt token `[B, 1, prompt_dim]`.
    pub fn forward(&self, fused: Tensor<2>) -> Tensor<3> {
        self.mlp.forward(fused).unsqueeze_dim(1)
    }
}

/// Which of the knowledge table's classes the image shows (independent logits, multi-label),
/// from the image embedding pooled by mean and by max. With the class head it answers "is the
/// structure asked for in this image?" — a heart is never in a fundus photo, whatever the question.
#[derive(Module, Debug)]
pub struct ContentHead {
    pub mlp: Mlp,
    /// `[classes]`: the MLP's logit above which a class counts as shown, calibrated per class on
    /// held-out training images (`train::thresholds`); 0 (even odds) until then. The head was
    /// fitted on its training images, and on new ones some classes score lower: fetal heads on
    /// some ultrasound images got 0.1–0.4 and were answered "not found".
    pub thresholds: Param<Tensor<1>>,
}

impl ContentHead {
    pub fn new(embedding_channels: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self {
            mlp: Mlp::new(2 * embedding_channels, hidden, classes, 2, device),
            thresholds: Param::from_tensor(Tensor::zeros([classes], device)).set_require_grad(false),
        }
    }

    /// `[B, C, H, W]` → `[B, classes]` logits, calibrated: 0 at each class's threshold.
    pub fn forward(&self, embedding: Tensor<4>) -> Tensor<2> {
        let logits = self.uncalibrated(embedding);
        let [_, classes] = logits.dims();
        logits - self.thresholds.val().reshape([1, classes])
    }

    /// The MLP's logits before the thresholds (what the calibration chooses them from).
    pub fn uncalibrated(&self, embedding: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = embedding.dims();
        let cells = embedding.reshape([b, c, h * w]);
        let pooled = Tensor::cat(vec![cells.clone().mean_dim(2).reshape([b, c]), cells.max_dim(2).reshape([b, c])], 1);
        self.mlp.forward(pooled)
    }
}

/// Where each of the knowledge table's structures lies in this image: one map of logits per class
/// on the 64×64 embedding grid, from the image alone (a 3×3 convolution over the embedding, two
/// residual dilated ones, then a per-cell linear layer per class). The question only chooses which
/// map to read. The box head sees a summary of the image and mostly learned where a structure
/// usually lies; this head reads every cell and its neighbours, so a lesion, a fetal head or a
/// kidney is found where it is. The neighbourhood matters: with a per-cell layer instead, the
/// map's box reached a validation box IoU of 0.66 (the class given; the usual place's box: 0.57;
/// Acc@0.5 0.75), with the 3×3 layer 0.68 (Acc@0.5 0.78) after a third of the epochs; the dilated
/// layer took the evaluation's box Acc@0.5 from 0.789 to 0.810 (fetal heads' map box on held-out
/// images: mask IoU 0.815 → 0.843), a second one with dilation 12 from 0.833 to 0.840 (the
/// held-out place loss 0.0231 → 0.0208).
///
/// Trained with an empty map on each image for every class that cannot be in it (another
/// modality or body region; `train::place`), a class's map also says whether the image shows it: where a class's calibrated count of cells
/// (`presence_cells`) is reached, that is evidence of presence the content head may lack (it
/// reads a pooled summary, and missed three fetal heads whose maps covered 576–715 cells).
#[derive(Module, Debug)]
pub struct PlaceHead {
    pub context: Conv2d,
    /// 3×3 with dilation 4, residual: each cell also reads cells four away (up to five away in the
    /// embedding, through the first layer).
    pub wide: Conv2d,
    /// 3×3 with dilation 12, residual: context up to seventeen cells away (a quarter of the
    /// image), to tell a structure from a larger one around it (a fetal head from the body).
    pub wider: Conv2d,
    pub output: Linear,
    /// `[classes]`: how many of a class's map cells above even odds make it even odds that the
    /// image shows the class; 0 where the map is not read as presence (too few held-out images
    /// to calibrate it, or no count that no image without the class reaches). Calibrated after
    /// training (`train::thresholds::presence_cells`).
    pub presence_cells: Param<Tensor<1>>,
}

impl PlaceHead {
    pub fn new(embedding_channels: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self {
            context: Conv2dConfig::new([embedding_channels, hidden], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device),
            wide: Conv2dConfig::new([hidden, hidden], [3, 3]).with_dilation([4, 4]).with_padding(PaddingConfig2d::Explicit(4, 4, 4, 4)).init(device),
            // Its parameters start at a tenth of the usual scale, so that adding it to a trained
            // head perturbs the maps little at first.
            wider: Conv2dConfig::new([hidden, hidden], [3, 3])
                .with_dilation([12, 12])
                .with_padding(PaddingConfig2d::Explicit(12, 12, 12, 12))
                .with_initializer(Initializer::KaimingUniform { gain: 0.1 / 3f64.sqrt(), fan_out_only: false })
                .init(device),
            output: LinearConfig::new(hidden, classes).init(device),
            presence_cells: Param::from_tensor(Tensor::zeros([classes], device)).set_require_grad(false),
        }
    }

    /// `[B, C, H, W]` → `[B, H·W, hidden]`.
    fn cells(&self, embedding: Tensor<4>) -> Tensor<3> {
        let hidden = relu(self.context.forward(embedding));
        let hidden = hidden.clone() + relu(self.wide.forward(hidden));
        let hidden = hidden.clone() + relu(self.wider.forward(hidden));
        let [b, c, h, w] = hidden.dims();
        hidden.reshape([b, c, h * w]).swap_dims(1, 2)
    }

    /// Every class's map: `[B, C, H, W]` → `[B, classes, H·W]` logits.
    pub fn forward(&self, embedding: Tensor<4>) -> Tensor<3> {
        self.output.forward(self.cells(embedding)).swap_dims(1, 2)
    }

    /// `[B, classes, cells]` maps → `[B, classes]` logits that the image shows each class, by
    /// its map: `ln(cells above even odds / presence_cells)` (even odds at the calibrated
    /// count), and [`NOT_READ_LOGIT`] for classes whose count is not calibrated.
    pub fn shows(&self, maps: Tensor<3>) -> Tensor<2> {
        let [b, classes, _] = maps.dims();
        let on = maps.greater_elem(0.0).float().sum_dim(2).reshape([b, classes]);
        let cells = self.presence_cells.val().reshape([1, classes]);
        let read = cells.clone().greater_elem(0.0);
        let evidence = (on.clamp_min(0.5) / cells.clamp_min(1.0)).log();
        evidence.mask_fill(read.bool_not().expand([b, classes]), NOT_READ_LOGIT)
    }
}

/// What [`PlaceHead::shows`] says for a class whose map is not read as presence: e^-30 of even
/// odds, so `max` with the content head's logit leaves that alone.
pub const NOT_READ_LOGIT: f32 = -30.0;

/// The box of a place map (`side × side` logits, row-major) as (cx, cy, w, h) in [0, 1]: the
/// cells above even odds, keeping every 8-connected region at least a fifth the size of the
/// largest (a stray cell far away does not stretch the box; both lungs of a pair are kept).
/// `None` when no cell is above even odds.
pub fn box_of_map(logits: &[f32], side: usize) -> Option<[f32; 4]> {
    let on: Vec<bool> = logits.iter().map(|&l| l > 0.0).collect();
    let mut region = vec![0usize; on.len()];
    let mut sizes = vec![0usize]; // region 0: off
    let mut stack = Vec::new();
    for start in 0..on.len() {
        if !on[start] || region[start] != 0 {
            continue;
        }
        let id = sizes.len();
        sizes.push(0);
        region[start] = id;
        stack.push(start);
        while let Some(cell) = stack.pop() {
            sizes[id] += 1;
            let (y, x) = ((cell / side) as isize, (cell % side) as isize);
            for (dy, dx) in [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)] {
                let (ny, nx) = (y + dy, x + dx);
                if ny < 0 || nx < 0 || ny >= side as isize || nx >= side as isize {
                    continue;
                }
                let next = ny as usize * side + nx as usize;
                if on[next] && region[next] == 0 {
                    region[next] = id;
                    stack.push(next);
                }
            }
        }
    }
    let largest = *sizes.iter().max()?;
    if largest == 0 {
        return None;
    }
    let kept = |id: usize| id != 0 && sizes[id] * 5 >= largest;
    let (mut x0, mut y0, mut x1, mut y1) = (side, side, 0, 0);
    for (cell, &id) in region.iter().enumerate() {
        if kept(id) {
            let (y, x) = (cell / side, cell % side);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    let n = side as f32;
    Some([(x0 + x1) as f32 / 2.0 / n, (y0 + y1) as f32 / 2.0 / n, (x1 - x0) as f32 / n, (y1 - y0) as f32 / n])
}

/// Logit that the structure asked for is in the image: the best `√(P(asked c) / P(asked top)) ·
/// P(image shows c)` over the classes. A question can mean different structures in different
/// modalities ("the lungs": the chest X-ray's lung fields or the lung CT's class), and the class
/// head spreads it over them; the plain expectation `Σ_c P(asked c)·P(shows c)` then answered
/// "not found" for lungs on a chest X-ray that were clearly there (0.21 of the question's mass on
/// them, 0.78 on the CT class). Here each contender counts by how close it comes to the top one.
/// On the validation questions: found on present targets 93.5 → 95.9 %, "not found" on absent
/// ones 97.9 → 95.1 %.
pub fn presence_logit(class_probs: Tensor<2>, content_logits: Tensor<2>) -> Tensor<1> {
    let [b, _] = class_probs.dims();
    let top = class_probs.clone().max_dim(1);
    let contenders = (class_probs / top).sqrt();
    logit((contenders * sigmoid(content_logits)).max_dim(1).reshape([b]).clamp(1e-6, 1.0 - 1e-6))
}

/// The inverse of the sigmoid, for probabilities already kept away from 0 and 1.
fn logit<const D: usize>(p: Tensor<D>) -> Tensor<D> {
    (p.clone() / (-p + 1.0)).log()
}

/// Logits over the knowledge table's classes: which structure the question was understood as.
#[derive(Module, Debug)]
pub struct ClassHead {
    pub linear: Linear,
}

impl ClassHead {
    pub fn new(dim: usize, classes: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(dim, classes).init(device) }
    }

    pub fn forward(&self, fused: Tensor<2>) -> Tensor<2> {
        self.linear.forward(fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_is_read_against_its_calibrated_threshold() {
        let device = Device::flex();
        let mut head = ContentHead::new(8, 16, 3, &device);
        let embedding = Tensor::<4>::random([2, 8, 4, 4], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        head.thresholds = Param::from_tensor(Tensor::from_floats([1.5, -2.0, 0.0], &device));
        let raw = head.uncalibrated(embedding.clone()).into_data().try_to_vec::<f32>().unwrap();
        let calibrated = head.forward(embedding).into_data().try_to_vec::<f32>().unwrap();
        for (i, (c, r)) in calibrated.iter().zip(&raw).enumerate() {
            let expected = r - [1.5, -2.0, 0.0][i % 3];
            assert!((c - expected).abs() < 1e-6, "class {}: {c} against {expected}", i % 3);
        }
    }

    #[test]
    fn presence_is_the_content_probability_of_the_contenders_for_the_question() {
        let device = Device::flex();
        // Sure of class 0; split between 1 and 2; mostly 0 with 1 a quarter as likely.
        let class_probs = Tensor::<1>::from_floats([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.8, 0.2, 0.0], &device).reshape([3, 3]);
        let content = Tensor::<1>::from_floats([-4.0, 3.0, 0.0, 2.0, -1.0, 1.0, -6.0, 4.0, 4.0], &device).reshape([3, 3]);
        let p = sigmoid(presence_logit(class_probs, content)).into_data().try_to_vec::<f32>().unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let expected = [s(-4.0), s(1.0), 0.5 * s(4.0)];
        assert!(p.iter().zip(expected).all(|(p, e)| (p - e).abs() < 1e-5), "{p:?} vs {expected:?}");
    }

    #[test]
    fn a_fresh_box_head_answers_with_the_class_anchor() {
        let device = Device::flex();
        let mut head = BoxHead::new(8, 16, 2, &device);
        head.anchors = Param::from_tensor(Tensor::<1>::from_floats([0.3, 0.4, 0.2, 0.1, 0.7, 0.6, 0.4, 0.5], &device).reshape([2, 4]));
        let fused = Tensor::random([1, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let map = Tensor::random([1, MAP_FEATURES], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let probs = Tensor::<1>::from_floats([0.0, 1.0], &device).reshape([1, 2]);
        let b = head.forward(fused, map, head.anchor(probs)).into_data().try_to_vec::<f32>().unwrap();
        for (got, want) in b.iter().zip([0.7, 0.6, 0.4, 0.5]) {
            assert!((got - want).abs() < 1e-5, "{b:?}");
        }
    }

    #[test]
    fn the_map_box_keeps_regions_of_a_fifth_of_the_largest() {
        let side = 16;
        let mut logits = vec![-1.0f32; side * side];
        let mut set = |x0: usize, y0: usize, x1: usize, y1: usize| {
            for y in y0..y1 {
                for x in x0..x1 {
                    logits[y * side + x] = 1.0;
                }
            }
        };
        set(2, 4, 6, 12); // 32 cells: a left lung
        set(9, 5, 13, 11); // 24 cells: a right lung, kept
        set(15, 0, 16, 2); // 2 cells: a stray blob, dropped
        let b = box_of_map(&logits, side).unwrap();
        let expected = [(2.0 + 13.0) / 32.0, (4.0 + 12.0) / 32.0, 11.0 / 16.0, 8.0 / 16.0];
        assert!(b.iter().zip(expected).all(|(g, w)| (g - w).abs() < 1e-6), "{b:?} vs {expected:?}");
        // Diagonal neighbours are one region: a one-cell-wide diagonal line is kept whole.
        let mut diagonal = vec![-1.0f32; side * side];
        for i in 0..side {
            diagonal[i * side + i] = 1.0;
        }
        diagonal[3] = 1.0; // a lone cell, far smaller than the line
        assert_eq!(box_of_map(&diagonal, side), Some([0.5, 0.5, 1.0, 1.0]));
        assert_eq!(box_of_map(&vec![-1.0; side * side], side), None);
    }

    /// A class's map is read as presence only where its count is calibrated, and is even odds
    /// at that count.
    #[test]
    fn a_map_says_the_image_shows_a_class_by_its_calibrated_count_of_cells() {
        let device = Device::flex();
        let mut head = PlaceHead::new(8, 6, 3, &device);
        head.presence_cells = Param::from_tensor(Tensor::from_floats([4.0, 0.0, 2.0], &device)).set_require_grad(false);
        // One image, 3 classes, 8 cells: class 0 has 8 cells on, class 1 all 8, class 2 one.
        let on = |n: usize| (0..8).map(move |i| if i < n { 1.0 } else { -1.0 });
        let maps: Vec<f32> = on(8).chain(on(8)).chain(on(1)).collect();
        let shows = head.shows(Tensor::<3>::from_data(burn::tensor::TensorData::new(maps, [1, 3, 8]), &device));
        let shows = shows.into_data().try_to_vec::<f32>().unwrap();
        assert!((shows[0] - 2f32.ln()).abs() < 1e-5, "{shows:?}"); // twice the count: p = 2/3
        assert_eq!(shows[1], NOT_READ_LOGIT); // not calibrated: never read, however full the map
        assert!((shows[2] - 0.5f32.ln()).abs() < 1e-5, "{shows:?}"); // half the count: p = 1/3
    }

    /// A cell's map reads its 3×3 neighbourhood of the embedding and, through the dilated layer,
    /// cells up to five away, and nothing further.
    #[test]
    fn a_place_map_cell_sees_its_neighbourhood_only() {
        let device = Device::flex();
        let (side, channels, classes) = (12, 8, 5);
        let head = PlaceHead::new(channels, 32, classes, &device); // 32 hidden units: never all dead at a cell
        let embedding = Tensor::<4>::random([1, channels, side, side], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let mut changed = embedding.clone().into_data().try_to_vec::<f32>().unwrap();
        for channel in 0..channels {
            changed[channel * side * side] += 5.0; // cell (0, 0)
        }
        let changed = Tensor::<1>::from_floats(changed.as_slice(), &device).reshape([1, channels, side, side]);
        let before = head.forward(embedding).into_data().try_to_vec::<f32>().unwrap();
        let after = head.forward(changed).into_data().try_to_vec::<f32>().unwrap();
        let cells = side * side;
        let moved = |y: usize, x: usize| (0..classes).any(|class| (before[class * cells + y * side + x] - after[class * cells + y * side + x]).abs() > 1e-6);
        assert!(moved(1, 1), "the diagonal neighbour must see the change");
        assert!(moved(5, 5) && moved(4, 0), "cells the dilated layer reaches must see it");
        assert!(!moved(6, 0) && !moved(0, 6) && !moved(6, 6), "cells six away must not");
    }

    #[test]
    fn moment_box_of_a_filled_rectangle_is_that_rectangle() {
        let device = Device::flex();
        // Cells 16..48 × 8..24 of a 64×64 grid are "in" (logit +30), the rest "out" (−30).
        let mut values = vec![-30.0f32; 64 * 64];
        for y in 8..24 {
            for x in 16..48 {
                values[y * 64 + x] = 30.0;
            }
        }
        let logits = Tensor::<1>::from_floats(values.as_slice(), &device).reshape([1, 64, 64]);
        let f = map_features(logits).into_data().try_to_vec::<f32>().unwrap();
        let expected = [0.5, 0.25, 0.5, 0.25, 512.0 / 4096.0, 3.0];
        for (got, want) in f.iter().zip(expected) {
            assert!((got - want).abs() < 2e-3, "{f:?}");
        }
    }
}
