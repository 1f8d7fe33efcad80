//! The `medsee` binary end to end: box segmentation writes its outputs, bad input exits non-zero
//! with one readable line and never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Case;
use medsee::image::Mask;

fn medsee(args: &[&str]) -> Output {
    let models = common::model_paths();
    Command::new(env!("CARGO_BIN_EXE_medsee"))
        .arg("--models")
        .arg(models.converted.parent().unwrap())
        .args(args)
        .output()
        .expect("medsee runs")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("medsee-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_clean_failure(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(stderr.contains(expected), "stderr {stderr:?} should mention {expected:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one-line error expected, got {stderr:?}");
}

#[test]
fn segment_writes_mask_overlay_and_json() {
    // The reference's own 256-px input and box: our mask must match its thresholded logits.
    let case = Case::all().into_iter().find(|c| c.name() == "endoscopy_polyp").unwrap();
    let out = temp_dir("ok");
    let b = case.f32s("box256");
    let box_arg = format!("{},{},{},{}", b[0], b[1], b[2], b[3]);
    let image = case.dir.join("input.png");
    let (mask, overlay, json) = (out.join("mask.png"), out.join("overlay.png"), out.join("out.json"));
    let output = medsee(&[
        "segment", image.to_str().unwrap(), "--box", &box_arg, "--variant", "f32",
        "--out", mask.to_str().unwrap(), "--overlay", overlay.to_str().unwrap(), "--json", json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let ours = Mask::from_gray(&image::open(&mask).unwrap().to_luma8());
    let (w, h) = (case.usize("scaled_width"), case.usize("scaled_height"));
    let logits = common::read_f32_file(&case.dir.join("low_res_logits.f32"));
    let cropped: Vec<f32> = (0..h).flat_map(|y| logits[y * 256..y * 256 + w].to_vec()).collect();
    let reference = Mask::from_logits(w as u32, h as u32, &cropped);
    let iou = ours.iou(&reference);
    assert!(iou >= 0.99, "CLI mask IoU vs reference {iou}");

    let overlay_image = image::open(&overlay).unwrap();
    assert_eq!((overlay_image.width() as usize, overlay_image.height() as usize), (w, h));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["mask_area"].as_u64().unwrap(), ours.area());
    assert!(summary["iou_prediction"].as_f64().unwrap() > 0.5);
    let mask_box = summary["mask_box"].as_array().unwrap();
    assert_eq!(mask_box.len(), 4);
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bad_inputs_fail_cleanly() {
    let out = temp_dir("bad");
    let good = Case::all().remove(0).dir.join("input.png");
    let good = good.to_str().unwrap();
    let write = |name: &str, bytes: &[u8]| -> String {
        let path = out.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let png = std::fs::read(good).unwrap();
    let truncated = write("truncated.png", &png[..png.len() / 3]);
    let garbage = write("garbage.png", b"this is not an image at all");
    let empty = write("empty.png", b"");
    let mask = out.join("m.png");
    let m = mask.to_str().unwrap();

    assert_clean_failure(&medsee(&["segment", "/nonexistent/x.png", "--box", "1,1,5,5", "--out", m]), "No such file");
    assert_clean_failure(&medsee(&["segment", &truncated, "--box", "1,1,5,5", "--out", m]), "cannot read the image");
    assert_clean_failure(&medsee(&["segment", &garbage, "--box", "1,1,5,5", "--out", m]), "cannot read the image");
    assert_clean_failure(&medsee(&["segment", &empty, "--box", "1,1,5,5", "--out", m]), "empty");
    assert_clean_failure(&medsee(&["segment", good, "--box", "900,900,950,950", "--out", m]), "outside");
    assert_clean_failure(&medsee(&["segment", good, "--box", "50,50,10,60", "--out", m]), "inverted");
    let malformed = medsee(&["segment", good, "--box", "1,2,three", "--out", m]);
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("not a number"));
    assert!(!mask.exists(), "no output may be written on failure");
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn damaged_weights_are_refused_by_name() {
    let models = common::model_paths();
    let root = temp_dir("weights");
    let converted = root.join("converted");
    std::fs::create_dir_all(&converted).unwrap();
    for entry in std::fs::read_dir(&models.converted).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, converted.join(path.file_name().unwrap())).unwrap();
    }
    let q8 = converted.join("litemedsam-q8.bpk");
    let bytes = std::fs::read(&q8).unwrap();
    std::fs::write(&q8, &bytes[..bytes.len() - 4096]).unwrap();

    let image = Case::all().remove(0).dir.join("input.png");
    let output = Command::new(env!("CARGO_BIN_EXE_medsee"))
        .args(["--models", root.to_str().unwrap(), "segment", image.to_str().unwrap(), "--box", "10,10,100,100", "--out"])
        .arg(root.join("m.png"))
        .output()
        .unwrap();
    assert_clean_failure(&output, "litemedsam-q8.bpk");
    assert!(String::from_utf8_lossy(&output.stderr).contains("truncated"));
    std::fs::remove_dir_all(Path::new(&root)).ok();
}

#[test]
fn ask_writes_mask_overlay_heat_map_and_json() {
    let out = temp_dir("ask");
    let case = Case::all().into_iter().find(|c| c.dir.ends_with("dermoscopy_lesion")).expect("dermoscopy case");
    let image_path = case.dir.join("input.png");
    let files = ["mask.png", "overlay.png", "answer.json", "heat.png"].map(|f| out.join(f));
    let [mask, overlay, json, heat] = files.each_ref().map(|p| p.to_str().unwrap());
    let question = "  Where is the mole\tthe doctor looked at? ";
    let output = medsee(&["ask", image_path.to_str().unwrap(), question, "--out", mask, "--overlay", overlay, "--json", json, "--heatmap", heat]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let answer = &summary["answer"];
    assert_eq!(answer["question"], "Where is the mole the doctor looked at?", "the question is cleaned");
    let explanation = summary["explanation"].as_str().unwrap();
    assert!(!explanation.is_empty());
    assert!(String::from_utf8_lossy(&output.stdout).contains(explanation.split_whitespace().next().unwrap()), "the explanation is printed");
    for branch in ["seg_weights", "box_weights"] {
        let weights: Vec<f64> = answer[branch].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(weights.len(), 4);
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{branch} {weights:?}");
    }
    let image = image::open(&image_path).unwrap();
    let written = Mask::from_gray(&image::open(mask).unwrap().to_luma8());
    assert_eq!((written.width, written.height), (image.width(), image.height()));
    assert_eq!(written.area(), answer["mask_area"].as_u64().unwrap());
    if answer["found"].as_bool().unwrap() {
        let b = &answer["box"];
        let [x0, y0, x1, y1] = ["x0", "y0", "x1", "y1"].map(|k| b[k].as_f64().unwrap());
        assert!(0.0 <= x0 && x0 < x1 && x1 <= image.width() as f64 && 0.0 <= y0 && y0 < y1 && y1 <= image.height() as f64, "{b}");
        let tight = written.bounding_box().expect("a found structure has a mask").as_array().map(f64::from);
        let prompt = ["x0", "y0", "x1", "y1"].map(|k| answer["prompt_box"][k].as_f64().expect("the decoder's prompt box is reported too"));
        // The class's calibrated gate says which box the answer reports.
        match answer["box_from"].as_str() {
            Some("mask") => assert_eq!([x0, y0, x1, y1], tight, "the box is the mask's tight box"),
            Some("prompt") => assert_eq!([x0, y0, x1, y1], prompt, "the box is the prompt box"),
            other => panic!("box_from {other:?}"),
        }
    } else {
        assert!(answer["box"].is_null() && answer["prompt_box"].is_null() && written.area() == 0, "not found means no box and an empty mask");
    }
    for path in [overlay, heat] {
        assert_eq!(image::image_dimensions(path).unwrap(), (image.width(), image.height()), "{path}");
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bad_questions_fail_cleanly_before_any_work() {
    let out = temp_dir("bad-question");
    let image = Case::all().remove(0).dir.join("input.png");
    let mask = out.join("m.png");
    let long = "x".repeat(10_000);
    for (question, expected) in [("", "empty"), (" \t\n ", "empty"), ("\u{7}\u{1b}\u{8}", "empty"), (long.as_str(), "10000 characters")] {
        let output = medsee(&["ask", image.to_str().unwrap(), question, "--out", mask.to_str().unwrap()]);
        assert_clean_failure(&output, expected);
    }
    assert!(!mask.exists(), "no output may be written on failure");
    std::fs::remove_dir_all(out).ok();
}
