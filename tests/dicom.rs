//! DICOM files written by pydicom (tests/fixtures/dicom/make_dicom.py) read through our decoder:
//! the file's window must give pydicom's own windowed image, RLE must decode to the same pixels,
//! and odd files must be refused with a message that says what is wrong.

use std::path::PathBuf;

use medsee::image::decode_image;
use medsee::image::dicom::{decode_dicom, Window};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom").join(name)).unwrap()
}

fn grays(image: &medsee::image::RgbImage) -> Vec<u8> {
    image.pixels.chunks(3).map(|p| p[0]).collect()
}

#[test]
fn the_files_window_matches_pydicom() {
    let decoded = decode_dicom(&fixture("ct_window.dcm"), None).unwrap();
    assert_eq!(decoded.file_window, Some(Window { center: 40.0, width: 400.0 }));
    let expected = image::load_from_memory(&fixture("ct_window_expected.png")).unwrap().to_luma8();
    assert_eq!((decoded.image.width, decoded.image.height), expected.dimensions());
    let worst = grays(&decoded.image).iter().zip(expected.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "largest gray difference from pydicom: {worst}");
    // decode_image (the path of the CLI and the page) recognises DICOM by itself.
    assert_eq!(decode_image(&fixture("ct_window.dcm")).unwrap(), decoded.image);
}

#[test]
fn rle_compressed_pixels_decode_like_the_uncompressed_file() {
    let plain = decode_dicom(&fixture("ct_window.dcm"), None).unwrap();
    let rle = decode_dicom(&fixture("ct_rle.dcm"), None).unwrap();
    assert_eq!(plain.image, rle.image);
}

#[test]
fn a_bone_window_clips_the_soft_tissue_slice() {
    let soft = grays(&decode_dicom(&fixture("ct_window.dcm"), None).unwrap().image);
    let bone = grays(&decode_dicom(&fixture("ct_window.dcm"), Some(Window { center: 400.0, width: 1800.0 })).unwrap().image);
    let spread = |g: &[u8]| *g.iter().max().unwrap() as i32 - *g.iter().min().unwrap() as i32;
    assert!(spread(&bone) < spread(&soft) / 2, "bone window {} vs soft tissue {}", spread(&bone), spread(&soft));
}

#[test]
fn a_file_without_a_window_is_scaled_to_its_range() {
    let decoded = decode_dicom(&fixture("mr_no_window.dcm"), None).unwrap();
    assert_eq!((decoded.applied_window, decoded.modality.as_deref()), (None, Some("MR")));
    let g = grays(&decoded.image);
    assert_eq!((*g.iter().min().unwrap(), *g.iter().max().unwrap()), (0, 255));
}

#[test]
fn odd_files_are_refused_with_a_reason() {
    let message = |name: &str| decode_image(&fixture(name)).unwrap_err().to_string();
    assert!(message("two_frames.dcm").contains("2 frames"), "{}", message("two_frames.dcm"));
    assert!(message("no_pixel_data.dcm").contains("no pixel data"), "{}", message("no_pixel_data.dcm"));
}
