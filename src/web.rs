//! The wasm boundary, driven by the page's Web Worker (`www/worker.js`). Thin on purpose: it
//! checks and converts arguments, calls the engine, and turns results and errors into plain JS
//! values. Inputs are validated before they reach code that could panic, because a panic aborts
//! the whole wasm instance.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Float32Array, Function, Object, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::ask::{heatmap_bytes, Answer, EncodedImage, Reasoner};
use crate::image::dicom::{decode_dicom, is_dicom, Window};
use crate::image::{decode_image, PixelBox};
use crate::llm::TextModel;
use crate::device_check::DeviceCheck;
use crate::segment::{read_f32, BoxSegmentation, BoxSegmenter};
use crate::weights::store::{page_files, reason_heads_file, Index};
use crate::weights::{self, converted_file_name, manifest, Variant};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A user-readable JS error; device failures are named `DeviceError` so the page can tell them
/// from bad input and fall back to the CPU.
fn js_error(error: crate::Error) -> JsValue {
    let is_device = matches!(error, crate::Error::Device(_));
    let value: JsValue = JsError::new(&error.to_string()).into();
    if is_device {
        set_property(&value, "name", "DeviceError");
    }
    value
}

fn set_property(target: &JsValue, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(target, &JsValue::from_str(key), &value.into());
}

fn box_to_js(b: Option<PixelBox>) -> JsValue {
    match b {
        Some(b) => Float32Array::from(b.as_array().as_slice()).into(),
        None => JsValue::NULL,
    }
}

fn segmentation_to_js(result: &BoxSegmentation) -> JsValue {
    let out = Object::new();
    set_property(&out, "width", result.mask.width);
    set_property(&out, "height", result.mask.height);
    set_property(&out, "mask", Uint8Array::from(result.mask.data.as_slice()));
    set_property(&out, "area", result.mask.area() as f64);
    set_property(&out, "iouPrediction", result.iou_prediction);
    set_property(&out, "prompt", box_to_js(Some(result.prompt)));
    set_property(&out, "maskBox", box_to_js(result.mask_box));
    out.into()
}

fn answer_to_js(answer: &Answer) -> Result<JsValue, JsValue> {
    let out = Object::new();
    // The summary (question, box, presence, structure, fusion weights…) as the CLI's JSON has it.
    // JSON-compatible: maps (the COCO RLE) become plain objects, as in the CLI's JSON.
    let summary = answer.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| JsError::new(&e.to_string()))?;
    set_property(&out, "summary", summary);
    set_property(&out, "width", answer.mask.width);
    set_property(&out, "height", answer.mask.height);
    set_property(&out, "mask", Uint8Array::from(answer.mask.data.as_slice()));
    let (w, h, cells) = heatmap_bytes(&answer.heatmap);
    set_property(&out, "heatmap", Uint8Array::from(cells.as_slice()));
    set_property(&out, "heatmapWidth", w as u32);
    set_property(&out, "heatmapHeight", h as u32);
    Ok(out.into())
}

/// The files `Engine.load` takes, in order (the worker fetches them as the index describes).
#[wasm_bindgen(js_name = weightFiles)]
pub fn weight_files() -> Vec<String> {
    page_files()
}

#[derive(Clone, Copy)]
enum Backend {
    WebGpu,
    Cpu,
}

/// The loaded models and, once an image is set, its encoding and the last answer.
#[wasm_bindgen]
pub struct Engine {
    reasoner: Rc<Reasoner>,
    backend: Backend,
    device_check: Option<String>,
    image: Option<Rc<EncodedImage>>,
    last_answer: Rc<RefCell<Option<Rc<Answer>>>>,
}

#[wasm_bindgen]
impl Engine {
    /// Checks every file against `index.json` (size and sha256), then loads LiteMedSAM, SmolLM2
    /// and the reasoning heads (all in the shipped quantised variant). `files` are the bytes of
    /// [`weight_files`], in that order. `backend` is `"webgpu"` (call it only when the page has
    /// found a WebGPU adapter) or `"cpu"`. On WebGPU the device check runs before the engine is
    /// returned; a failure there is an error named `DeviceError`, after which the page uses the CPU.
    pub async fn load(index_json: String, files: Vec<Uint8Array>, backend: String) -> Result<Engine, JsValue> {
        let index = Index::parse(&index_json, "models/index.json").map_err(js_error)?;
        let names = page_files();
        if files.len() != names.len() {
            return Err(JsError::new(&format!("expected {} weight files, got {}", names.len(), files.len())).into());
        }
        let mut bytes = Vec::with_capacity(files.len());
        for (name, file) in names.iter().zip(files) {
            let entry = index.entry(name).map_err(js_error)?;
            let data = file.to_vec();
            weights::verify(name, &data, entry.size, &entry.sha256).map_err(js_error)?;
            bytes.push(data);
        }
        let [sam, llm, tokenizer, config, heads]: [Vec<u8>; 5] = bytes.try_into().map_err(|_| JsError::new("weight file list changed"))?;
        let backend = match backend.as_str() {
            "webgpu" => Backend::WebGpu,
            "cpu" => Backend::Cpu,
            other => return Err(JsError::new(&format!("unknown backend {other:?} (expected webgpu or cpu)")).into()),
        };
        let device = match backend {
            Backend::WebGpu => Device::wgpu_options()
                .init_async()
                .await
                .map_err(|e| js_error(crate::Error::Device(format!("WebGPU did not start ({e})"))))?,
            Backend::Cpu => Device::flex(),
        };
        // Records load on the CPU, where quantised weights expand to f32, then move as a whole.
        let cpu = Device::flex();
        let segmenter = BoxSegmenter::from_record_bytes(&names[0], sam, Variant::Quantized, cpu.clone()).map_err(js_error)?.to_device(&device);
        let llm_name = converted_file_name(manifest::SMOLLM2, Variant::Quantized);
        let llm = TextModel::from_bytes(&config, &tokenizer, &llm_name, llm, Variant::Quantized, &cpu).map_err(js_error)?.to_device(&device);
        let reasoner = Reasoner::new(segmenter, llm, reason_heads_file(Variant::Quantized), heads).map_err(js_error)?;
        let device_check = match backend {
            Backend::WebGpu => Some(DeviceCheck::verify(&reasoner).await.map_err(js_error)?.describe()),
            Backend::Cpu => None,
        };
        Ok(Engine { reasoner: Rc::new(reasoner), backend, device_check, image: None, last_answer: Rc::default() })
    }

    /// Which compute path runs the model: `"webgpu"` or `"cpu"`.
    pub fn backend(&self) -> String {
        match self.backend {
            Backend::WebGpu => "webgpu",
            Backend::Cpu => "cpu",
        }
        .into()
    }

    /// On WebGPU, how far the device check's values were from the CPU reference.
    #[wasm_bindgen(js_name = deviceCheck)]
    pub fn device_check(&self) -> Option<String> {
        self.device_check.clone()
    }

    /// Decodes an image file (PNG, JPEG or single-frame DICOM; for DICOM with the window
    /// `center`/`width` when given, else the file's own) and encodes it once for every question.
    /// Returns `{width, height, pixels: Uint8Array (RGB, for display), dicom: null |
    /// {fileWindow, appliedWindow, modality}}` once the embedding is computed (on WebGPU the work
    /// is queued; the promise waits for it). On error the previous image stays loaded.
    #[wasm_bindgen(js_name = setImage)]
    pub fn set_image(&mut self, bytes: &[u8], center: Option<f64>, width: Option<f64>) -> Result<js_sys::Promise, JsValue> {
        let out = Object::new();
        let image = if is_dicom(bytes) {
            let window = center.zip(width).map(|(center, width)| Window { center, width });
            let decoded = decode_dicom(bytes, window).map_err(js_error)?;
            let info = Object::new();
            let window_js = |w: Option<Window>| w.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).unwrap_or(JsValue::NULL);
            set_property(&info, "fileWindow", window_js(decoded.file_window));
            set_property(&info, "appliedWindow", window_js(decoded.applied_window));
            set_property(&info, "modality", decoded.modality.map(JsValue::from).unwrap_or(JsValue::NULL));
            set_property(&out, "dicom", info);
            decoded.image
        } else {
            set_property(&out, "dicom", JsValue::NULL);
            decode_image(bytes).map_err(js_error)?
        };
        let encoded = Rc::new(self.reasoner.encode(&image));
        self.image = Some(Rc::clone(&encoded));
        self.last_answer.replace(None);
        set_property(&out, "width", image.width);
        set_property(&out, "height", image.height);
        set_property(&out, "pixels", Uint8Array::from(image.pixels.as_slice()));
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            read_f32(encoded.place_maps.clone().slice([0..1, 0..1, 0..1])).await.map_err(js_error)?;
            Ok(out.into())
        }))
    }

    fn image(&self) -> Result<Rc<EncodedImage>, JsValue> {
        self.image.clone().ok_or_else(|| js_error(crate::Error::Prompt("open an image first".into())))
    }

    /// Segments the object inside the box (image pixels). Resolves to
    /// `{width, height, mask: Uint8Array (0/1), area, iouPrediction, prompt, maskBox}`.
    #[wasm_bindgen(js_name = segmentBox)]
    pub fn segment_box(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> js_sys::Promise {
        let reasoner = Rc::clone(&self.reasoner);
        let image = self.image();
        wasm_bindgen_futures::future_to_promise(async move {
            let result = reasoner.segmenter().segment_box(&image?.embedding, PixelBox::new(x0, y0, x1, y1)).await.map_err(js_error)?;
            Ok(segmentation_to_js(&result))
        })
    }

    /// Answers a question about the current image. Resolves to `{summary, width, height,
    /// mask: Uint8Array (0/1), heatmap: Uint8Array, heatmapWidth, heatmapHeight}`.
    pub fn ask(&self, question: String) -> js_sys::Promise {
        let reasoner = Rc::clone(&self.reasoner);
        let image = self.image();
        let last_answer = Rc::clone(&self.last_answer);
        wasm_bindgen_futures::future_to_promise(async move {
            let answer = reasoner.ask(&*image?, &question).await.map_err(js_error)?;
            let out = answer_to_js(&answer);
            last_answer.replace(Some(Rc::new(answer)));
            out
        })
    }

    /// Explains the last answer: calls `on_text(piece)` for each piece of text as it is
    /// generated (return `false` to stop) and resolves to the whole explanation.
    pub fn explain(&self, on_text: Function) -> js_sys::Promise {
        let reasoner = Rc::clone(&self.reasoner);
        let answer = self.last_answer.borrow().clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let answer = answer.ok_or_else(|| js_error(crate::Error::Prompt("ask a question first".into())))?;
            let text = reasoner
                .explain(&answer, |piece| on_text.call1(&JsValue::NULL, &JsValue::from_str(piece)).map(|v| v.as_bool() != Some(false)).unwrap_or(false))
                .await
                .map_err(js_error)?;
            Ok(JsValue::from_str(&text))
        })
    }
}
