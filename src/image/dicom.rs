//! Single-frame DICOM through dicom-rs: the pixel data is decoded (uncompressed, RLE or baseline
//! JPEG), the modality rescale (slope/intercept, e.g. to Hounsfield units) applied, and then a
//! window — the file's own, or one the user picked — maps it to 8-bit gray for the model.

use std::io::Cursor;

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption, WindowLevel};

use super::decode::{RgbImage, MAX_SIDE};
use crate::error::{Error, Result};

/// A DICOM window: values in `center ± width/2` span black to white.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}

/// A decoded DICOM image and the facts the page shows next to it.
#[derive(Debug, Clone)]
pub struct DicomImage {
    pub image: RgbImage,
    /// The window stored in the file, if any (the default for display).
    pub file_window: Option<Window>,
    /// The window actually applied; `None` when the values were min-max scaled.
    pub applied_window: Option<Window>,
    pub modality: Option<String>,
}

/// True when `bytes` look like a DICOM file (`DICM` after the 128-byte preamble, or at the start).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.get(0..4) == Some(b"DICM")
}

fn dicom_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Image(format!("DICOM {what}: {e}"))
}

/// Decodes a single-frame DICOM file with `window` (or the file's own window when `None`).
pub fn decode_dicom(bytes: &[u8], window: Option<Window>) -> Result<DicomImage> {
    if let Some(w) = window {
        if !(w.width > 0.0 && w.width.is_finite() && w.center.is_finite()) {
            return Err(Error::Prompt(format!("window width must be a positive number (got centre {}, width {})", w.center, w.width)));
        }
    }
    check_declared_lengths(bytes)?;
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(Cursor::new(bytes))
        .map_err(|e| dicom_error("file could not be read", e))?;
    if object.element(tags::PIXEL_DATA).is_err() {
        return Err(Error::Image("the DICOM file has no pixel data (is it a report or a structured document?)".into()));
    }
    let read_u32 = |tag, name: &str| -> Result<u32> {
        object
            .element(tag)
            .map_err(|_| Error::Image(format!("the DICOM file has no {name}")))?
            .to_int::<u32>()
            .map_err(|e| dicom_error(name, e))
    };
    let (rows, columns) = (read_u32(tags::ROWS, "Rows")?, read_u32(tags::COLUMNS, "Columns")?);
    if rows == 0 || columns == 0 || rows > MAX_SIDE || columns > MAX_SIDE {
        return Err(Error::Image(format!("the DICOM image is {columns}×{rows} pixels; sides must be 1 to {MAX_SIDE}")));
    }
    let frames = object.element(tags::NUMBER_OF_FRAMES).ok().and_then(|e| e.to_int::<u32>().ok()).unwrap_or(1);
    if frames > 1 {
        return Err(Error::Image(format!("the DICOM file holds {frames} frames; medsee reads single images — export one slice or frame")));
    }
    let modality = object.element(tags::MODALITY).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
    if object.meta().transfer_syntax() == RLE_LOSSLESS {
        let read_u16 = |tag, name: &str| read_u32(tag, name).map(|v| v as usize);
        let segments = read_u16(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")? * read_u16(tags::BITS_ALLOCATED, "BitsAllocated")?.div_ceil(8);
        let fragments = object.element(tags::PIXEL_DATA).ok().and_then(|e| e.value().fragments()).unwrap_or(&[]);
        check_rle_fragments(fragments, rows as usize * columns as usize, segments)?;
    }
    // Natively, a panic in a decoder we have not hardened against becomes an error (wasm cannot
    // unwind, which is why the RLE data is checked above rather than trusted to this).
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| object.decode_pixel_data()))
        .map_err(|_| Error::Image("DICOM: the compressed pixel data is corrupt".into()))?;
    let pixels = decoded.map_err(|e| dicom_error("pixel data could not be decoded", e))?;
    let file_window = pixels.window().ok().flatten().and_then(|w| w.first()).map(|w| Window { center: w.center, width: w.width });
    let applied_window = window.or(file_window).filter(|w| w.width > 0.0);
    let voi = match applied_window {
        Some(w) => VoiLutOption::Custom(WindowLevel { center: w.center, width: w.width }),
        None => VoiLutOption::Normalize,
    };
    let options = ConvertOptions::new().with_voi_lut(voi).force_8bit();
    let decoded = pixels.to_dynamic_image_with_options(0, &options).map_err(|e| dicom_error("pixel data could not be converted", e))?;
    let rgb = decoded.to_rgb8();
    let image = RgbImage::new(rgb.width(), rgb.height(), rgb.into_raw())?;
    Ok(DicomImage { image, file_window, applied_window, modality })
}

const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";

/// Walks the element headers and refuses a value length larger than what is left of the file.
/// dicom-rs allocates (and zero-fills) a value's declared length before reading it, so a 34 kB
/// corrupt file could make it take 2.4 GB (found by fuzzing); in the page that memory would stay
/// with the worker for good. Deflated data sets (which medsee does not read) are left to dicom-rs.
fn check_declared_lengths(bytes: &[u8]) -> Result<()> {
    let start = if bytes.get(128..132) == Some(b"DICM") { 132 } else { 4 };
    let mut walker = HeaderWalker { bytes, at: start, explicit_vr: true, big_endian: false, in_fragments: false };
    // The file meta group is always explicit VR little endian; it names the data set's syntax.
    let mut transfer_syntax = String::new();
    while walker.at + 4 <= bytes.len() && u16::from_le_bytes([bytes[walker.at], bytes[walker.at + 1]]) == 0x0002 {
        let (tag, value) = walker.next()?;
        if tag == (0x0002, 0x0010) {
            transfer_syntax = String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_string();
        }
    }
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        return Ok(());
    }
    walker.explicit_vr = transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN;
    walker.big_endian = transfer_syntax == EXPLICIT_VR_BIG_ENDIAN;
    while walker.at + 8 <= bytes.len() {
        walker.next()?;
    }
    Ok(())
}

/// A linear walk over element headers: sequences and items are stepped into (their elements
/// follow), the fragments of encapsulated pixel data are stepped over.
struct HeaderWalker<'a> {
    bytes: &'a [u8],
    at: usize,
    explicit_vr: bool,
    big_endian: bool,
    in_fragments: bool,
}

impl<'a> HeaderWalker<'a> {
    /// The next header's tag and the value it is followed by (empty for containers).
    fn next(&mut self) -> Result<((u16, u16), &'a [u8])> {
        const UNDEFINED: usize = 0xFFFF_FFFF;
        let bytes = self.bytes;
        let big = self.big_endian;
        let u16_at = |i: usize| bytes.get(i..i + 2).map(|b| if big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) });
        let u32_at = |i: usize| {
            bytes.get(i..i + 4).map(|b| if big { u32::from_be_bytes([b[0], b[1], b[2], b[3]]) } else { u32::from_le_bytes([b[0], b[1], b[2], b[3]]) } as usize)
        };
        let cut = || Error::Image("DICOM file could not be read: it ends inside an element header (truncated?)".into());
        let tag = (u16_at(self.at).ok_or_else(cut)?, u16_at(self.at + 2).ok_or_else(cut)?);
        let (header, length, container) = if tag.0 == 0xFFFE {
            // Item and delimiters: a 4-byte length, no VR. A fragment's bytes are skipped; an
            // item of a sequence holds elements.
            (8, u32_at(self.at + 4).ok_or_else(cut)?, !self.in_fragments)
        } else if self.explicit_vr {
            let vr = bytes.get(self.at + 4..self.at + 6).ok_or_else(cut)?;
            // The VRs with a 2-byte length; any other, unknown ones included (dicom-rs reads
            // those as UN), has 2 reserved bytes and a 4-byte length.
            let short = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"];
            if short.iter().any(|s| s.as_slice() == vr) {
                (8, u16_at(self.at + 6).ok_or_else(cut)? as usize, false)
            } else {
                (12, u32_at(self.at + 8).ok_or_else(cut)?, vr == b"SQ")
            }
        } else {
            (8, u32_at(self.at + 4).ok_or_else(cut)?, false)
        };
        self.at += header;
        if tag == (0xFFFE, 0xE0DD) {
            self.in_fragments = false;
        }
        if length == UNDEFINED {
            // A sequence, or encapsulated pixel data: what follows is items up to a delimiter.
            if tag.0 == 0x7FE0 {
                self.in_fragments = true;
            }
            return Ok((tag, &[]));
        }
        let left = bytes.len() - self.at;
        if length > left {
            return Err(Error::Image(format!(
                "DICOM file could not be read: element ({:04X},{:04X}) declares {length} bytes but only {left} are left (corrupt or truncated file)",
                tag.0, tag.1
            )));
        }
        if container {
            return Ok((tag, &[]));
        }
        let value = &bytes[self.at..self.at + length];
        self.at += length;
        Ok((tag, value))
    }
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Checks RLE Lossless frames (DICOM PS3.5 Annex G) before dicom-rs decodes them: its decoder
/// indexes past the end of a segment table that is cut short or claims too many segments, and of
/// a segment that decodes to fewer bytes than the image has pixels (both found by fuzzing).
/// `segments` is how many the image needs: samples per pixel × bytes per sample.
fn check_rle_fragments(fragments: &[Vec<u8>], pixels: usize, segments: usize) -> Result<()> {
    const HEADER_BYTES: usize = 64; // segment count + 15 offsets, all u32
    let corrupt = |why: String| Error::Image(format!("DICOM: the RLE-compressed pixel data is corrupt ({why})"));
    for fragment in fragments {
        if fragment.len() < HEADER_BYTES {
            return Err(corrupt(format!("a frame of {} bytes cannot hold the 64-byte segment table", fragment.len())));
        }
        let word = |i: usize| u32::from_le_bytes([fragment[4 * i], fragment[4 * i + 1], fragment[4 * i + 2], fragment[4 * i + 3]]) as usize;
        let count = word(0);
        if !(segments..=15).contains(&count) {
            return Err(corrupt(format!("the segment table lists {count} segments; this image needs {segments}")));
        }
        let mut bounds: Vec<usize> = (1..=count).map(word).collect();
        bounds.push(fragment.len());
        for pair in bounds.windows(2).take(segments) {
            let segment = fragment.get(pair[0]..pair[1]).ok_or_else(|| corrupt("a segment lies outside the frame".into()))?;
            let decoded = packbits_decoded_len(segment);
            if decoded < pixels {
                return Err(corrupt(format!("a segment decodes to {decoded} bytes for {pixels} pixels")));
            }
        }
    }
    Ok(())
}

/// How many bytes a PackBits segment expands to, read the way dicom-rs reads it: a literal run
/// cut off by the segment's end counts only the bytes present; a repeat without its byte ends it.
fn packbits_decoded_len(segment: &[u8]) -> usize {
    let (mut at, mut decoded) = (0, 0);
    while at < segment.len() {
        let header = segment[at] as i8;
        at += 1;
        match header {
            -128 => {}
            repeat if repeat < 0 => {
                if at == segment.len() {
                    break;
                }
                decoded += (1 - repeat as isize) as usize;
                at += 1;
            }
            literal => {
                let run = literal as usize + 1;
                decoded += run.min(segment.len() - at);
                at += run;
            }
        }
    }
    decoded
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    /// A small CT-like file: 16-bit signed values, rescaled by `slope`·v + `intercept`, with a
    /// stored window; `extra` adds or overrides elements.
    pub(crate) fn synthetic_ct(values: &[i16], columns: u16, window: Option<(f64, f64)>, extra: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
        let rows = (values.len() / columns as usize) as u16;
        let mut obj = InMemDicomObject::new_empty();
        let put = |obj: &mut InMemDicomObject, tag, vr, value: PrimitiveValue| {
            obj.put(DataElement::new(tag, vr, value));
        };
        put(&mut obj, tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2".into());
        put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5.6.7".into());
        put(&mut obj, tags::MODALITY, VR::CS, "CT".into());
        put(&mut obj, tags::ROWS, VR::US, PrimitiveValue::from(rows));
        put(&mut obj, tags::COLUMNS, VR::US, PrimitiveValue::from(columns));
        put(&mut obj, tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into());
        put(&mut obj, tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(&mut obj, tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
        put(&mut obj, tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
        put(&mut obj, tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16));
        put(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1".into());
        put(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "-1024".into());
        if let Some((center, width)) = window {
            put(&mut obj, tags::WINDOW_CENTER, VR::DS, center.to_string().into());
            put(&mut obj, tags::WINDOW_WIDTH, VR::DS, width.to_string().into());
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(&mut obj, tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(bytes));
        for element in extra {
            obj.put(element);
        }
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
            .expect("meta");
        let mut out = Vec::new();
        file.write_all(&mut out).expect("write");
        out
    }

    /// Stored value for a Hounsfield value (intercept −1024).
    fn stored(hu: i16) -> i16 {
        hu + 1024
    }

    fn grays(image: &RgbImage) -> Vec<u8> {
        image.pixels.chunks(3).map(|p| p[0]).collect()
    }

    #[test]
    fn the_files_window_is_applied_after_the_rescale() {
        // Soft-tissue window 40/400: −160 HU and below black, 240 HU and above white.
        let values = [-1000, -160, 40, 240, 1000].map(stored);
        let bytes = synthetic_ct(&values, 5, Some((40.0, 400.0)), vec![]);
        assert!(is_dicom(&bytes));
        let decoded = decode_dicom(&bytes, None).unwrap();
        assert_eq!(decoded.file_window, Some(Window { center: 40.0, width: 400.0 }));
        assert_eq!(decoded.modality.as_deref(), Some("CT"));
        let g = grays(&decoded.image);
        assert_eq!((g[0], g[1], g[4]), (0, 0, 255), "{g:?}");
        assert!((g[2] as i32 - 128).abs() <= 1, "the window centre is mid-gray: {g:?}");
    }

    #[test]
    fn a_chosen_window_overrides_the_files() {
        // Lung window −600/1500: −1000 HU is dark but not clipped to the same value as −1350.
        let values = [-1000, -600, 100].map(stored);
        let bytes = synthetic_ct(&values, 3, Some((40.0, 400.0)), vec![]);
        let lung = decode_dicom(&bytes, Some(Window { center: -600.0, width: 1500.0 })).unwrap();
        let g = grays(&lung.image);
        assert!(g[0] > 0 && g[0] < 100 && (g[1] as i32 - 128).abs() <= 1 && g[2] > 200, "{g:?}");
        assert!(decode_dicom(&bytes, Some(Window { center: 0.0, width: 0.0 })).is_err());
    }

    #[test]
    fn without_a_window_values_are_min_max_scaled() {
        let bytes = synthetic_ct(&[0, 500, 1000].map(stored), 3, None, vec![]);
        let decoded = decode_dicom(&bytes, None).unwrap();
        assert_eq!(decoded.applied_window, None);
        assert_eq!(grays(&decoded.image), vec![0, 128, 255]);
    }

    #[test]
    fn odd_files_get_clear_errors() {
        let good = synthetic_ct(&[0, 1, 2, 3], 2, None, vec![]);
        let frames = synthetic_ct(&[0, 1, 2, 3], 2, None, vec![DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("2"))]);
        let message = |bytes: &[u8]| decode_dicom(bytes, None).unwrap_err().to_string();
        assert!(message(&frames).contains("2 frames"), "{}", message(&frames));
        let mut no_pixels = OpenFileOptions::new().from_reader(Cursor::new(&good[128..])).unwrap();
        no_pixels.remove_element(tags::PIXEL_DATA);
        let mut bytes = Vec::new();
        no_pixels.write_all(&mut bytes).unwrap();
        assert!(message(&bytes).contains("no pixel data"), "{}", message(&bytes));
        for cut in [132, good.len() / 2, good.len() - 3] {
            assert!(matches!(decode_dicom(&good[..cut], None), Err(Error::Image(_))), "cut at {cut}");
        }
    }

    #[test]
    fn packbits_lengths_follow_the_format() {
        // Apple's PackBits example (TN1023): 15 bytes expand to 24.
        let encoded = [0xFE, 0xAA, 0x02, 0x80, 0x00, 0x2A, 0xFD, 0xAA, 0x03, 0x80, 0x00, 0x2A, 0x22, 0xF7, 0xAA];
        assert_eq!(packbits_decoded_len(&encoded), 24);
        assert_eq!(packbits_decoded_len(&encoded[..14]), 14, "a repeat without its byte ends the segment");
        assert_eq!(packbits_decoded_len(&[0x05, 1, 2]), 2, "a literal cut short counts what is there");
        assert_eq!(packbits_decoded_len(&[0x80, 0x80]), 0, "-128 is a no-op");
    }

    #[test]
    fn corrupt_rle_frames_are_refused_before_decoding() {
        use dicom_core::value::{PixelFragmentSequence, Value};
        let original = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dicom/ct_rle.dcm")).unwrap();
        let with_frame = |edit: &dyn Fn(&mut Vec<u8>)| -> Vec<u8> {
            let mut object = OpenFileOptions::new().read_preamble(ReadPreamble::Auto).from_reader(Cursor::new(&original)).unwrap();
            let mut frame = object.element(tags::PIXEL_DATA).unwrap().value().fragments().unwrap()[0].clone();
            edit(&mut frame);
            let sequence = Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), vec![frame]));
            object.put(DataElement::new(tags::PIXEL_DATA, VR::OB, sequence));
            let mut bytes = Vec::new();
            object.write_all(&mut bytes).unwrap();
            bytes
        };
        assert!(decode_dicom(&with_frame(&|_| {}), None).is_ok(), "the untouched frame decodes");
        let set_word = |frame: &mut Vec<u8>, index: usize, value: u32| frame[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
        let corruptions: [(&str, &dyn Fn(&mut Vec<u8>)); 6] = [
            ("cut inside the table", &|f| f.truncate(40)),
            ("too many segments", &|f| set_word(f, 0, 200)),
            ("no segments", &|f| set_word(f, 0, 0)),
            ("offset past the end", &|f| set_word(f, 1, 10_000_000)),
            ("offsets reversed", &|f| set_word(f, 2, 8)),
            ("segments cut short", &|f| f.truncate(68)),
        ];
        for (name, corrupt) in corruptions {
            match decode_dicom(&with_frame(corrupt), None) {
                Err(Error::Image(message)) => assert!(message.contains("RLE-compressed pixel data is corrupt"), "{name}: {message}"),
                other => panic!("{name}: {:?}", other.map(|d| d.image.width)),
            }
        }
    }

    #[test]
    fn a_value_longer_than_the_file_is_refused_before_allocating_it() {
        let good = synthetic_ct(&[0, 1, 2, 3], 2, None, vec![]);
        let pixel_header = good.windows(4).rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00]).unwrap();
        let mut huge = good.clone();
        huge[pixel_header + 8..pixel_header + 12].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        let message = decode_dicom(&huge, None).unwrap_err().to_string();
        assert!(message.contains("(7FE0,0010) declares 2147483632 bytes"), "{message}");
        // An unknown VR is read with a 4-byte length, as dicom-rs reads it.
        let rows_header = good.windows(6).position(|w| w == [0x28, 0x00, 0x10, 0x00, b'U', b'S']).unwrap();
        let mut odd_vr = good.clone();
        odd_vr[rows_header + 4..rows_header + 6].copy_from_slice(b"\0'");
        let message = decode_dicom(&odd_vr, None).unwrap_err().to_string();
        assert!(message.contains("(0028,0010) declares"), "{message}");
    }

    #[test]
    fn sequences_are_walked_into_not_over() {
        use dicom_core::value::DataSetSequence;
        let item = InMemDicomObject::from_element_iter([DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("T-D0050"))]);
        let sequence = DataElement::new(tags::ANATOMIC_REGION_SEQUENCE, VR::SQ, DataSetSequence::from(vec![item]));
        let bytes = synthetic_ct(&[0, 1, 2, 3], 2, None, vec![sequence]);
        assert!(decode_dicom(&bytes, None).is_ok());
    }

    #[test]
    fn big_endian_files_are_walked_with_their_byte_order() {
        let le = synthetic_ct(&[0, 500, 1000].map(stored), 3, None, vec![]);
        let mut object = OpenFileOptions::new().read_preamble(ReadPreamble::Auto).from_reader(Cursor::new(&le)).unwrap();
        object.meta_mut().transfer_syntax = EXPLICIT_VR_BIG_ENDIAN.to_string();
        let mut be = Vec::new();
        object.write_all(&mut be).unwrap();
        assert_eq!(grays(&decode_dicom(&be, None).unwrap().image), vec![0, 128, 255]);
        let pixel_header = be.windows(6).rposition(|w| w == [0x7F, 0xE0, 0x00, 0x10, b'O', b'W']).unwrap();
        be[pixel_header + 8..pixel_header + 12].copy_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
        let message = decode_dicom(&be, None).unwrap_err().to_string();
        assert!(message.contains("(7FE0,0010) declares 2147483632 bytes"), "{message}");
    }
}
