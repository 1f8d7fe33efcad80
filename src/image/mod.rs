//! Pixels in and out: decoding user files, the model's preprocessing, and masks.

pub mod decode;
pub mod dicom;
pub mod mask;
pub mod preprocess;

pub use decode::{decode_image, RgbImage};
pub use mask::Mask;
pub use preprocess::{Preprocessed, PixelBox};
