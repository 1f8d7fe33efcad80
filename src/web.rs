//! The wasm boundary, driven by the page's Web Worker (`www/worker.js`). Thin on purpose: it
//! checks and converts arguments, calls the engine, and turns results and errors into plain JS
//! values. Inputs are validated before they reach code that could panic, because a panic aborts
//! the whole wasm instance.

use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::image::{decode_image, PixelBox};
use crate::segment::{BoxSegmentation, BoxSegmenter, ImageEmbedding};
use crate::weights::{self, Variant};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_error(error: crate::Error) -> JsValue {
    JsError::new(&error.to_string()).into()
}

fn set(object: &Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(object, &JsValue::from_str(key), &value.into());
}

fn box_to_js(b: Option<PixelBox>) -> JsValue {
    match b {
        Some(b) => js_sys::Float32Array::from(b.as_array().as_slice()).into(),
        None => JsValue::NULL,
    }
}

fn segmentation_to_js(result: &BoxSegmentation) -> JsValue {
    let out = Object::new();
    set(&out, "width", result.mask.width);
    set(&out, "height", result.mask.height);
    set(&out, "mask", Uint8Array::from(result.mask.data.as_slice()));
    set(&out, "area", result.mask.area() as f64);
    set(&out, "iouPrediction", result.iou_prediction);
    set(&out, "prompt", box_to_js(Some(result.prompt)));
    set(&out, "maskBox", box_to_js(result.mask_box));
    out.into()
}

/// One loaded model and, once an image is set, its cached embedding.
#[wasm_bindgen]
pub struct Engine {
    segmenter: Rc<BoxSegmenter>,
    embedding: Option<Rc<ImageEmbedding>>,
}

#[wasm_bindgen]
impl Engine {
    /// Checks `bytes` against the expected size and sha256, then loads them as LiteMedSAM.
    pub fn load(file: &str, bytes: Vec<u8>, size: f64, sha256: &str, variant: &str) -> Result<Engine, JsValue> {
        let variant: Variant = variant.parse().map_err(js_error)?;
        weights::verify(file, &bytes, size as u64, sha256).map_err(js_error)?;
        let segmenter = BoxSegmenter::from_record_bytes(file, bytes, variant, Device::flex()).map_err(js_error)?;
        Ok(Engine { segmenter: Rc::new(segmenter), embedding: None })
    }

    /// Which compute path runs the model.
    pub fn backend(&self) -> String {
        "CPU (wasm SIMD)".into()
    }

    /// Decodes an image file (PNG or JPEG) and runs the image encoder once for it.
    /// Returns `{width, height}`. On error the previous image stays loaded.
    #[wasm_bindgen(js_name = setImage)]
    pub fn set_image(&mut self, bytes: &[u8]) -> Result<JsValue, JsValue> {
        let image = decode_image(bytes).map_err(js_error)?;
        let embedding = self.segmenter.encode(&image);
        self.embedding = Some(Rc::new(embedding));
        let out = Object::new();
        set(&out, "width", image.width);
        set(&out, "height", image.height);
        Ok(out.into())
    }

    /// Segments the object inside the box (image pixels). Resolves to
    /// `{width, height, mask: Uint8Array (0/1), area, iouPrediction, prompt, maskBox}`.
    #[wasm_bindgen(js_name = segmentBox)]
    pub fn segment_box(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> js_sys::Promise {
        let segmenter = Rc::clone(&self.segmenter);
        let embedding = self.embedding.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let embedding = embedding.ok_or_else(|| js_error(crate::Error::Prompt("open an image first".into())))?;
            let result = segmenter.segment_box(&embedding, PixelBox::new(x0, y0, x1, y1)).await.map_err(js_error)?;
            Ok(segmentation_to_js(&result))
        })
    }
}
