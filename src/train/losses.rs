//! MediSee's training losses, as tensor functions (they run under autodiff when training):
//! masks BCE×2 + Dice×0.5, boxes L1 + GIoU×2, the similarity-map BCE + Dice, the presence BCE
//! and the class cross-entropy.

use burn::tensor::activation::{log_sigmoid, log_softmax, sigmoid};
use burn::tensor::{Int, Tensor, TensorData};

use crate::reason::heads::cxcywh_to_xyxy;

/// Mean binary cross-entropy of `logits` against 0/1 `targets`, computed stably from logits.
pub fn bce_with_logits<const D: usize>(logits: Tensor<D>, targets: Tensor<D>) -> Tensor<1> {
    let log_p = log_sigmoid(logits.clone());
    let log_not_p = log_sigmoid(-logits);
    -(targets.clone() * log_p + (-targets + 1.0) * log_not_p).mean()
}

/// Soft Dice loss over all elements: `1 − (2·Σpt + 1) / (Σp + Σt + 1)`.
pub fn dice_loss<const D: usize>(logits: Tensor<D>, targets: Tensor<D>) -> Tensor<1> {
    let p = sigmoid(logits);
    let inter = (p.clone() * targets.clone()).sum();
    let total = p.sum() + targets.sum();
    -((inter * 2.0 + 1.0) / (total + 1.0)) + 1.0
}

/// The mask loss of MediSee: BCE×2 + Dice×0.5.
pub fn mask_loss<const D: usize>(logits: Tensor<D>, targets: Tensor<D>) -> Tensor<1> {
    bce_with_logits(logits.clone(), targets.clone()) * 2.0 + dice_loss(logits, targets) * 0.5
}

/// Mean cross-entropy of logits `[B, N]` against one class per row.
pub fn cross_entropy(logits: Tensor<2>, targets: &[usize]) -> Tensor<1> {
    let [b, _] = logits.dims();
    let rows = targets.iter().map(|&t| t as i64).collect::<Vec<_>>();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(rows, [b, 1]), &logits.device());
    -log_softmax(logits, 1).gather(1, targets).mean()
}

/// Mean generalised IoU loss `1 − GIoU` of `[B, 4]` boxes given as (x0, y0, x1, y1).
pub fn giou_loss(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let part = |t: &Tensor<2>, i: usize| t.clone().narrow(1, i, 1);
    let (px0, py0, px1, py1) = (part(&pred, 0), part(&pred, 1), part(&pred, 2), part(&pred, 3));
    let (tx0, ty0, tx1, ty1) = (part(&target, 0), part(&target, 1), part(&target, 2), part(&target, 3));
    let area = |x0: Tensor<2>, y0: Tensor<2>, x1: Tensor<2>, y1: Tensor<2>| (x1 - x0).clamp_min(0.0) * (y1 - y0).clamp_min(0.0);
    let inter = area(
        px0.clone().max_pair(tx0.clone()),
        py0.clone().max_pair(ty0.clone()),
        px1.clone().min_pair(tx1.clone()),
        py1.clone().min_pair(ty1.clone()),
    );
    let union = area(px0.clone(), py0.clone(), px1.clone(), py1.clone()) + area(tx0.clone(), ty0.clone(), tx1.clone(), ty1.clone()) - inter.clone();
    let hull = area(px0.min_pair(tx0), py0.min_pair(ty0), px1.max_pair(tx1), py1.max_pair(ty1));
    let iou = inter / (union.clone() + 1e-7);
    let giou = iou - (hull.clone() - union) / (hull + 1e-7);
    -giou.mean() + 1.0
}

/// The box loss of MediSee: L1 + GIoU×2, on `[B, 4]` (cx, cy, w, h) boxes normalised to [0, 1].
pub fn box_loss(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let l1 = (pred.clone() - target.clone()).abs().mean();
    l1 + giou_loss(cxcywh_to_xyxy(pred, 1.0), cxcywh_to_xyxy(target, 1.0)) * 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t2(rows: &[[f32; 4]]) -> Tensor<2> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::<1>::from_floats(flat.as_slice(), &Device::flex()).reshape([rows.len(), 4])
    }

    fn scalar(t: Tensor<1>) -> f32 {
        t.into_scalar()
    }

    #[test]
    fn bce_matches_its_definition() {
        let zeros = Tensor::<1>::zeros([4], &Device::flex());
        let ones = Tensor::<1>::ones([4], &Device::flex());
        assert!((scalar(bce_with_logits(zeros.clone(), ones.clone())) - std::f32::consts::LN_2).abs() < 1e-6);
        // Very confident and right: ~0; very confident and wrong: ~|logit|, without overflow.
        assert!(scalar(bce_with_logits(ones.clone() * 50.0, ones.clone())) < 1e-6);
        assert!((scalar(bce_with_logits(ones.clone() * 50.0, zeros)) - 50.0).abs() < 1e-3);
    }

    #[test]
    fn dice_is_zero_for_a_perfect_mask_and_near_one_for_a_disjoint_one() {
        let target = Tensor::<1>::from_floats([1.0, 1.0, 0.0, 0.0], &Device::flex());
        let perfect = Tensor::<1>::from_floats([30.0, 30.0, -30.0, -30.0], &Device::flex());
        assert!(scalar(dice_loss(perfect.clone(), target.clone())) < 1e-6);
        assert!(scalar(dice_loss(-perfect, target)) > 0.6);
    }

    #[test]
    fn cross_entropy_matches_its_definition() {
        let logits = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 0.0, 0.0, 0.0], &Device::flex()).reshape([2, 3]);
        let expected = -(1.0f32 - (1.0f32.exp() + 2.0f32.exp() + 3.0f32.exp()).ln());
        assert!((scalar(cross_entropy(logits.clone().narrow(0, 0, 1), &[0])) - expected).abs() < 1e-5);
        let mean = (expected + 3.0f32.ln()) / 2.0;
        assert!((scalar(cross_entropy(logits, &[0, 2])) - mean).abs() < 1e-5, "the mean over rows");
    }

    /// The head predicts (cx, cy, w, h): two boxes of the same size, half overlapping, have
    /// L1 = |Δcx|/4 and GIoU = IoU = 1/3 (the hull is their union).
    #[test]
    fn box_loss_reads_centre_size_boxes() {
        let a = t2(&[[0.3, 0.5, 0.2, 0.2]]);
        let b = t2(&[[0.4, 0.5, 0.2, 0.2]]);
        let expected = 0.1 / 4.0 + 2.0 * (1.0 - 1.0 / 3.0);
        let got = scalar(box_loss(a.clone(), b));
        assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
        assert!(scalar(box_loss(a.clone(), a)).abs() < 1e-4);
    }

    #[test]
    fn giou_of_equal_overlapping_and_disjoint_boxes() {
        let a = t2(&[[0.0, 0.0, 2.0, 2.0]]);
        assert!(scalar(giou_loss(a.clone(), a.clone())).abs() < 1e-6);
        // Half overlap: IoU = 2/6, hull = union, so the loss is 1 − 1/3.
        let b = t2(&[[1.0, 0.0, 3.0, 2.0]]);
        assert!((scalar(giou_loss(a.clone(), b)) - 2.0 / 3.0).abs() < 1e-5);
        // Disjoint: IoU 0 and a hull penalty, so the loss exceeds 1 (and grows with distance).
        let near = scalar(giou_loss(a.clone(), t2(&[[3.0, 0.0, 5.0, 2.0]])));
        let far = scalar(giou_loss(a, t2(&[[9.0, 0.0, 11.0, 2.0]])));
        assert!(near > 1.0 && far > near, "{near} {far}");
    }
}
