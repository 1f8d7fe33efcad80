//! Golden parity of the Burn LiteMedSAM against the PyTorch reference of the wheel
//! (fixtures made by tests/fixtures/make_litemedsam.py from real val images).

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{read_f32_file, shared_data, Case};
use futures_lite::future::block_on;
use medsee::image::preprocess::{normalise_and_pad, resize_longest_side};
use medsee::image::{decode_image, Mask, PixelBox, RgbImage};
use medsee::sam::{postprocess_masks, INPUT_SIZE};
use medsee::segment::read_f32;
use medsee::{BoxSegmenter, Variant};

fn load_png_rgb(path: &std::path::Path) -> RgbImage {
    decode_image(&std::fs::read(path).unwrap()).unwrap()
}

fn reference_low_res_mask(case: &Case) -> Mask {
    Mask::from_logits(256, 256, &read_f32_file(&case.dir.join("low_res_logits.f32")))
}

struct Outcome {
    embedding_err: f32,
    embedding_range: f32,
    stats_err: f32,
    low_res_iou: f64,
    logits_max_err: f32,
    full_iou: f64,
    iou_pred_err: f32,
}

/// Runs the model on the reference's own 256-px input and compares every stored output.
fn run_case(segmenter: &BoxSegmenter, case: &Case) -> Outcome {
    let device = segmenter.device();
    let input = normalise_and_pad(&load_png_rgb(&case.dir.join("input.png")));
    let image = Tensor::<1>::from_data(TensorData::new(input, [3 * INPUT_SIZE * INPUT_SIZE]), device).reshape([1, 3, INPUT_SIZE, INPUT_SIZE]);
    let embedding = segmenter.model().encode(image);

    // Embedding: stored channels exactly, all channels through their mean and std.
    let stored = read_f32_file(&case.dir.join("embedding.f32"));
    let channels = case.usize("embedding_channels_stored");
    let ours = block_on(read_f32(embedding.clone())).unwrap();
    let embedding_err = stored.iter().zip(&ours[..channels * 4096]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let embedding_range = case.meta["embedding_max"].as_f64().unwrap() as f32 - case.meta["embedding_min"].as_f64().unwrap() as f32;
    let (means, stds) = (case.f32s("embedding_channel_mean"), case.f32s("embedding_channel_std"));
    let mut stats_err = 0.0f32;
    for c in 0..256 {
        let values = &ours[c * 4096..(c + 1) * 4096];
        let mean = values.iter().sum::<f32>() / 4096.0;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4096.0).sqrt();
        stats_err = stats_err.max((mean - means[c]).abs()).max((std - stds[c]).abs());
    }

    // Mask logits for the case's box, at 256² and at the original size.
    let box256 = case.f32s("box256");
    let boxes = Tensor::<1>::from_floats(box256.as_slice(), device).reshape([1, 4]);
    let output = segmenter.model().decode_boxes(embedding, boxes, None);
    let logits = block_on(read_f32(output.low_res_masks.clone())).unwrap();
    let reference_logits = read_f32_file(&case.dir.join("low_res_logits.f32"));
    let logits_max_err = logits.iter().zip(&reference_logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let low_res_iou = Mask::from_logits(256, 256, &logits).iou(&reference_low_res_mask(case));

    let (w, h) = (case.usize("width"), case.usize("height"));
    let (sw, sh) = (case.usize("scaled_width"), case.usize("scaled_height"));
    let full = block_on(read_f32(postprocess_masks(output.low_res_masks, [sh, sw], [h, w]))).unwrap();
    let reference_full = Mask::from_gray(&image::open(case.dir.join("mask.png")).unwrap().to_luma8());
    let full_iou = Mask::from_logits(w as u32, h as u32, &full).iou(&reference_full);

    let iou_pred = block_on(read_f32(output.iou_predictions)).unwrap()[0];
    let iou_pred_err = (iou_pred - case.meta["iou_prediction"].as_f64().unwrap() as f32).abs();
    Outcome { embedding_err, embedding_range, stats_err, low_res_iou, logits_max_err, full_iou, iou_pred_err }
}

#[test]
fn f32_matches_the_pytorch_reference() {
    let segmenter = common::segmenter(Variant::F32);
    for case in Case::all() {
        let o = run_case(&segmenter, &case);
        eprintln!(
            "{:<20} f32: embedding max err {:.2e} (range {:.1}), stats err {:.2e}, logits max err {:.2e}, IoU 256² {:.4}, IoU full {:.4}, IoU-pred err {:.1e}",
            case.name(), o.embedding_err, o.embedding_range, o.stats_err, o.logits_max_err, o.low_res_iou, o.full_iou, o.iou_pred_err
        );
        assert!(o.embedding_err <= 1e-3 * o.embedding_range, "{}: embedding error {} exceeds 1e-3 of its range {}", case.name(), o.embedding_err, o.embedding_range);
        assert!(o.stats_err <= 1e-3 * o.embedding_range, "{}: channel statistics differ by {}", case.name(), o.stats_err);
        assert!(o.low_res_iou >= 0.99, "{}: low-res mask IoU {}", case.name(), o.low_res_iou);
        assert!(o.full_iou >= 0.99, "{}: full-size mask IoU {}", case.name(), o.full_iou);
        assert!(o.iou_pred_err <= 1e-3, "{}: IoU prediction off by {}", case.name(), o.iou_pred_err);
    }
}

#[test]
fn q8_stays_close_to_the_reference() {
    let segmenter = common::segmenter(Variant::Quantized);
    for case in Case::all() {
        let o = run_case(&segmenter, &case);
        eprintln!(
            "{:<20} q8: embedding max err {:.2e} (range {:.1}), logits max err {:.2e}, IoU 256² {:.4}, IoU full {:.4}, IoU-pred err {:.1e}",
            case.name(), o.embedding_err, o.embedding_range, o.logits_max_err, o.low_res_iou, o.full_iou, o.iou_pred_err
        );
        assert!(o.low_res_iou >= 0.97, "{}: q8 low-res mask IoU {}", case.name(), o.low_res_iou);
        assert!(o.full_iou >= 0.97, "{}: q8 full-size mask IoU {}", case.name(), o.full_iou);
    }
}

/// From the original file: our decode + resize against the reference's resized pixels, and the
/// whole engine path against the reference mask.
#[test]
fn full_pipeline_from_the_original_image() {
    let Some(data) = shared_data() else {
        eprintln!("SKIPPED: ../shared/data/medseg is not beside this checkout");
        return;
    };
    let segmenter = common::segmenter(Variant::F32);
    for case in Case::all() {
        let original = load_png_rgb(&data.join(case.meta["image"].as_str().unwrap()));
        let resized = resize_longest_side(&original);
        let reference = load_png_rgb(&case.dir.join("input.png"));
        assert_eq!((resized.width, resized.height), (reference.width, reference.height), "{}: resized size", case.name());
        let diffs: Vec<f64> = resized.pixels.iter().zip(&reference.pixels).map(|(a, b)| (*a as f64 - *b as f64).abs()).collect();
        let mean_diff = diffs.iter().sum::<f64>() / diffs.len() as f64;

        let embedding = segmenter.encode(&original);
        let b = case.f32s("box");
        let result = block_on(segmenter.segment_box(&embedding, PixelBox::new(b[0], b[1], b[2], b[3]))).unwrap();
        let reference_full = Mask::from_gray(&image::open(case.dir.join("mask.png")).unwrap().to_luma8());
        let iou = result.mask.iou(&reference_full);
        eprintln!("{:<20} resize mean |diff| {:.3} grey levels; engine mask IoU vs reference {:.4}", case.name(), mean_diff, iou);
        assert!(mean_diff <= 1.0, "{}: our resize differs from the reference by {mean_diff} levels on average", case.name());
        assert!(iou >= 0.97, "{}: engine mask IoU {iou}", case.name());
    }
}
