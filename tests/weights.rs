//! Weight loading refuses anything that is not exactly what was converted.

mod common;

use burn::tensor::Device;
use medsee::sam::LiteMedSamConfig;
use medsee::weights::{self, store, Variant};
use medsee::{BoxSegmenter, Error};

#[test]
fn converted_files_match_their_index() {
    let paths = common::model_paths();
    let index = store::Index::read(&paths.converted).unwrap();
    for variant in Variant::ALL {
        let name = weights::converted_file_name("litemedsam", variant);
        assert!(index.files.contains_key(&name), "{name} missing from index.json");
        store::read_verified(&paths.converted, &name).unwrap();
    }
    let source = weights::manifest::source(weights::manifest::LITEMEDSAM);
    assert_eq!(index.sources.get("litemedsam").map(String::as_str), Some(source.sha256));
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    let paths = common::model_paths();
    let good = store::read_verified(&paths.converted, "litemedsam-q8.bpk").unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", good[..6].to_vec()),
        ("truncated data", good[..good.len() / 2].to_vec()),
        ("not burnpack", b"GGUF this is something else entirely".to_vec()),
    ];
    for (what, bytes) in cases {
        let result = BoxSegmenter::from_record_bytes("test.bpk", bytes, Variant::Quantized, Device::flex());
        match result {
            Err(Error::Weights { file, .. }) => assert_eq!(file, "test.bpk", "{what}"),
            Err(other) => panic!("{what}: unexpected error kind {other}"),
            Ok(_) => panic!("{what}: loaded corrupt weights"),
        }
    }
    // A record for another model shape is refused too.
    let small = medsee::sam::tiny_vit::TinyVitConfig::default().init(&Device::flex());
    let foreign = weights::record_bytes(small).unwrap();
    let refused = weights::load_record(LiteMedSamConfig::default().init(&Device::flex()), "foreign.bpk", foreign);
    assert!(matches!(refused, Err(Error::Weights { .. })));
}

#[test]
fn sha256_mismatch_names_the_file() {
    let err = weights::verify("x.bin", b"abc", 3, &"0".repeat(64)).unwrap_err().to_string();
    assert!(err.contains("x.bin") && err.contains("sha256"), "{err}");
    let err = weights::verify("x.bin", b"abc", 4, &"0".repeat(64)).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    let ok = weights::sha256_hex(b"abc");
    assert_eq!(ok, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    weights::verify("x.bin", b"abc", 3, &ok).unwrap();
}

#[test]
fn half_precision_records_are_half_the_size_and_load_as_f32() {
    use burn::tensor::{Distribution, Tensor};
    use medsee::reason::heads::ClassHead;
    let device = Device::flex();
    let head = ClassHead::new(576, 75, &device);
    let full = weights::record_bytes(head.clone()).unwrap();
    let half = weights::half_record_bytes(&head).unwrap();
    assert!(half.len() < full.len() * 6 / 10, "f16 {} bytes vs f32 {}", half.len(), full.len());
    let reloaded = weights::load_record(ClassHead::new(576, 75, &device), "half.bpk", half).unwrap();
    let input = Tensor::<2>::random([4, 576], Distribution::Normal(0.0, 1.0), &device);
    let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
    let (expected, actual) = (values(head.forward(input.clone())), values(reloaded.forward(input)));
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = expected.iter().zip(&actual).fold(0f32, |m, (e, a)| m.max((e - a).abs()));
    assert!(worst > 0.0, "the record was not rounded to f16");
    assert!(worst < 2e-3 * scale, "f16 rounding moved an output by {worst} (outputs up to {scale})");
}

#[test]
fn a_record_of_another_model_is_refused() {
    let paths = common::model_paths();
    let sam = store::read_verified(&paths.converted, "litemedsam-q8.bpk").unwrap();
    let head = medsee::reason::heads::ClassHead::new(576, 75, &Device::flex());
    match weights::load_record(head, "litemedsam-q8.bpk", sam) {
        Err(Error::Weights { file, .. }) => assert_eq!(file, "litemedsam-q8.bpk"),
        Err(other) => panic!("unexpected error kind {other}"),
        Ok(_) => panic!("loaded LiteMedSAM weights as a class head"),
    }
}
