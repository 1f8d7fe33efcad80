//! Box-prompted segmentation: image → embedding (once) → box → mask. The engine shared by the
//! CLI, the benchmarks and (through `web`) the page.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::image::preprocess::preprocess;
use crate::image::{Mask, PixelBox, RgbImage};
use crate::sam::{postprocess_masks, LiteMedSam, LiteMedSamConfig, INPUT_SIZE};
use crate::weights::{self, Variant};

/// The cached encoder output for one image, with the geometry to map results back to it.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// `[1, 256, 64, 64]`.
    pub tensor: Tensor<4>,
    pub scaled_size: (u32, u32),
    pub original_size: (u32, u32),
    pub scale: f32,
}

/// The answer to one box prompt.
#[derive(Debug, Clone)]
pub struct BoxSegmentation {
    pub mask: Mask,
    /// The decoder's own estimate of the mask's IoU.
    pub iou_prediction: f32,
    /// The box actually used (clipped to the image).
    pub prompt: PixelBox,
    /// Tight box around the mask, `None` when the mask is empty.
    pub mask_box: Option<PixelBox>,
}

pub struct BoxSegmenter {
    model: LiteMedSam,
    device: Device,
    variant: Variant,
}

impl BoxSegmenter {
    /// Takes `model` with its final weights on `device`.
    pub fn new(mut model: LiteMedSam, device: Device, variant: Variant) -> Self {
        model.prompt_encoder = model.prompt_encoder.with_cached_positional_encoding();
        Self { model, device, variant }
    }

    /// Loads a converted burnpack record (bytes already fetched and verified by the caller).
    pub fn from_record_bytes(file: &str, bytes: Vec<u8>, variant: Variant, device: Device) -> Result<Self> {
        let model = weights::load_record(LiteMedSamConfig::default().init(&device), file, bytes)?;
        Ok(Self::new(model, device, variant))
    }

    /// Loads `litemedsam-<variant>.bpk` from the converted-weights folder, checking it against the
    /// size and sha256 recorded when it was converted.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(converted_dir: &std::path::Path, variant: Variant, device: Device) -> Result<Self> {
        let name = weights::converted_file_name(weights::manifest::LITEMEDSAM, variant);
        let bytes = weights::store::read_verified(converted_dir, &name)?;
        Self::from_record_bytes(&name, bytes, variant, device)
    }

    /// Moves the model to `device` (loading happens on the CPU, where quantised records expand).
    pub fn to_device(self, device: &Device) -> Self {
        Self::new(self.model.to_device(device), device.clone(), self.variant)
    }

    pub fn model(&self) -> &LiteMedSam {
        &self.model
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Runs the image encoder. Costly (tens of GFLOP): do it once per image and keep the result.
    pub fn encode(&self, image: &RgbImage) -> ImageEmbedding {
        let input = preprocess(image);
        let tensor = Tensor::<1>::from_data(TensorData::new(input.tensor, [3 * INPUT_SIZE * INPUT_SIZE]), &self.device)
            .reshape([1, 3, INPUT_SIZE, INPUT_SIZE]);
        ImageEmbedding {
            tensor: self.model.encode(tensor),
            scaled_size: input.scaled_size,
            original_size: input.original_size,
            scale: input.scale,
        }
    }

    /// Segments the object inside `prompt` (original image pixels).
    pub async fn segment_box(&self, embedding: &ImageEmbedding, prompt: PixelBox) -> Result<BoxSegmentation> {
        let (width, height) = embedding.original_size;
        let prompt = prompt.validated(width, height)?;
        let model_box = prompt.as_array().map(|v| v * embedding.scale);
        let boxes = Tensor::<1>::from_floats(model_box.as_slice(), &self.device).reshape([1, 4]);
        let output = self.model.decode_boxes(embedding.tensor.clone(), boxes, None);
        let (sw, sh) = embedding.scaled_size;
        let logits = postprocess_masks(output.low_res_masks, [sh as usize, sw as usize], [height as usize, width as usize]);
        let logits = read_f32(logits).await?;
        let iou = read_f32(output.iou_predictions).await?;
        let mask = Mask::from_logits(width, height, &logits);
        let mask_box = mask.bounding_box();
        Ok(BoxSegmentation { mask, iou_prediction: iou[0], prompt, mask_box })
    }
}

/// Reads a tensor back to the host without blocking (required on wasm).
pub async fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    let data = tensor.into_data_async().await.map_err(|e| Error::Device(format!("reading results back failed: {e:?}")))?;
    data.try_into_vec_as::<f32>().map_err(|e| Error::Other(format!("unexpected result type: {e:?}")))
}
