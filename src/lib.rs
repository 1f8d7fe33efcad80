//! medsee: medical reasoning segmentation that runs on the user's own device.
//!
//! Data flows one way, and the modules follow it:
//! bytes → [`image`] (decode, preprocess) → [`sam`] (LiteMedSAM: embedding, prompts, masks)
//! → [`segment`] (the engine: box → mask) → mask / box / overlay; [`llm`] is the language model
//! (tokens → SmolLM2 → hidden states and text); [`reason`] is MediSee's graph joining them, and
//! [`ask`] the engine on top (question → mask, box, heat map → explanation).
//! [`weights`] holds everything that knows checkpoint formats and key names.

pub mod ask;
pub mod cpu;
pub mod device_check;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod fuzzing;
pub mod image;
pub mod llm;
pub mod reason;
pub mod rng;
pub mod sam;
pub mod segment;
pub mod weights;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use ask::{Answer, EncodedImage, Reasoner};
pub use error::{Error, Result};
pub use segment::{BoxSegmentation, BoxSegmenter, ImageEmbedding};
pub use weights::Variant;
