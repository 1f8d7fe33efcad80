//! LiteMedSAM's PyTorch checkpoint (`lite_medsam.pth`) → the Burn model in `crate::sam`.
//!
//! The mapping is explicit: every Burn parameter names the checkpoint tensor(s) it comes from
//! and how (copied, transposed for `Linear`, or a convolution with its batch norm folded in).
//! Loading fails if any Burn parameter is left unset or any checkpoint tensor is left unused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::pytorch_reader::{DType as TorchDType, PytorchReader};
use burn::store::ModuleSnapshot;
use burn::tensor::Device;

use super::quantize::{quantize_weights, QuantizeReport, WeightFormat};
use crate::error::{Error, Result};
use crate::sam::{LiteMedSam, LiteMedSamConfig};

/// The two high-resolution encoder stages (256² and 128² grids, ~5 % of the weights) stay f32:
/// quantisation noise there is carried through every later stage. Measured on the golden cases,
/// worst mask IoU against f32 rises from 0.960 (all weights Q8) to 0.989.
pub const KEEP_F32: &[&str] = &["image_encoder.patch_embed", "image_encoder.conv_stage", "image_encoder.attention_stages.0."];

/// The shipped quantised LiteMedSAM.
pub fn quantize(model: LiteMedSam) -> (LiteMedSam, QuantizeReport) {
    quantize_weights(model, WeightFormat::Q8Block32, KEEP_F32)
}

/// PyTorch `BatchNorm2d` default epsilon, used by every `Conv2d_BN` of TinyViT.
const BATCH_NORM_EPS: f64 = 1e-5;

/// A checkpoint tensor as f32 values.
struct Checkpoint {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    used: BTreeSet<String>,
    file: String,
}

impl Checkpoint {
    fn read(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let reader = PytorchReader::new(path).map_err(|e| Error::weights(&file, format!("not a readable PyTorch checkpoint ({e})")))?;
        let mut tensors = BTreeMap::new();
        for (name, tensor) in reader.tensors() {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            if tensor.dtype() != TorchDType::F32 {
                return Err(Error::weights(&file, format!("{name}: expected float32, found {:?}", tensor.dtype())));
            }
            let bytes = tensor.read().map_err(|e| Error::weights(&file, format!("{name}: {e}")))?;
            let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name.clone(), (tensor.shape().to_vec(), values));
        }
        Ok(Self { tensors, used: BTreeSet::new(), file })
    }

    fn take(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let found = self.tensors.get(name).cloned();
        self.used.insert(name.to_string());
        found.ok_or_else(|| Error::weights(&self.file, format!("missing tensor {name}")))
    }

    fn unused(&self) -> Vec<&String> {
        self.tensors.keys().filter(|k| !self.used.contains(*k)).collect()
    }
}

/// Burn-path-named tensors ready to apply to the module.
struct Mapped {
    tensors: Vec<PackTensor>,
}

impl Mapped {
    fn put(&mut self, path: String, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.push(super::pack_f32(path, shape, &values));
    }

    fn copy(&mut self, ckpt: &mut Checkpoint, burn: &str, torch: &str) -> Result<()> {
        let (shape, values) = ckpt.take(torch)?;
        self.put(burn.to_string(), shape, values);
        Ok(())
    }

    /// `nn.Linear`: PyTorch stores `[out, in]`, Burn `[in, out]`.
    fn linear(&mut self, ckpt: &mut Checkpoint, burn: &str, torch: &str) -> Result<()> {
        let (shape, values) = ckpt.take(&format!("{torch}.weight"))?;
        let (out, inp) = (shape[0], shape[1]);
        self.put(format!("{burn}.weight"), vec![inp, out], super::transpose(out, inp, &values));
        self.copy(ckpt, &format!("{burn}.bias"), &format!("{torch}.bias"))
    }

    /// `nn.LayerNorm` → Burn `LayerNorm` (gamma/beta) or our `LayerNorm2d` (same names).
    fn layer_norm(&mut self, ckpt: &mut Checkpoint, burn: &str, torch: &str) -> Result<()> {
        self.copy(ckpt, &format!("{burn}.gamma"), &format!("{torch}.weight"))?;
        self.copy(ckpt, &format!("{burn}.beta"), &format!("{torch}.bias"))
    }

    fn conv(&mut self, ckpt: &mut Checkpoint, burn: &str, torch: &str, bias: bool) -> Result<()> {
        self.copy(ckpt, &format!("{burn}.weight"), &format!("{torch}.weight"))?;
        if bias {
            self.copy(ckpt, &format!("{burn}.bias"), &format!("{torch}.bias"))?;
        }
        Ok(())
    }

    /// TinyViT `Conv2d_BN` (`{torch}.c`, `{torch}.bn`) folded into one biased convolution,
    /// exactly as the reference `Conv2d_BN.fuse()` does.
    fn conv_bn(&mut self, ckpt: &mut Checkpoint, burn: &str, torch: &str) -> Result<()> {
        let (shape, weight) = ckpt.take(&format!("{torch}.c.weight"))?;
        let (_, gamma) = ckpt.take(&format!("{torch}.bn.weight"))?;
        let (_, beta) = ckpt.take(&format!("{torch}.bn.bias"))?;
        let (_, mean) = ckpt.take(&format!("{torch}.bn.running_mean"))?;
        let (_, var) = ckpt.take(&format!("{torch}.bn.running_var"))?;
        let per_out = weight.len() / shape[0];
        let mut folded = Vec::with_capacity(weight.len());
        let mut bias = Vec::with_capacity(shape[0]);
        for o in 0..shape[0] {
            let scale = gamma[o] as f64 / (var[o] as f64 + BATCH_NORM_EPS).sqrt();
            folded.extend(weight[o * per_out..(o + 1) * per_out].iter().map(|w| (*w as f64 * scale) as f32));
            bias.push((beta[o] as f64 - mean[o] as f64 * scale) as f32);
        }
        self.put(format!("{burn}.weight"), shape.clone(), folded);
        self.put(format!("{burn}.bias"), vec![shape[0]], bias);
        Ok(())
    }
}

fn map_image_encoder(m: &mut Mapped, c: &mut Checkpoint, config: &LiteMedSamConfig) -> Result<()> {
    let vit = &config.image_encoder;
    m.conv_bn(c, "image_encoder.patch_embed.conv1", "image_encoder.patch_embed.seq.0")?;
    m.conv_bn(c, "image_encoder.patch_embed.conv2", "image_encoder.patch_embed.seq.2")?;
    for b in 0..vit.depths[0] {
        for conv in ["conv1", "conv2", "conv3"] {
            m.conv_bn(c, &format!("image_encoder.conv_stage.blocks.{b}.{conv}"), &format!("image_encoder.layers.0.blocks.{b}.{conv}"))?;
        }
    }
    for conv in ["conv1", "conv2", "conv3"] {
        m.conv_bn(c, &format!("image_encoder.conv_stage.downsample.{conv}"), &format!("image_encoder.layers.0.downsample.{conv}"))?;
    }
    for stage in 1..4 {
        let burn_stage = format!("image_encoder.attention_stages.{}", stage - 1);
        let torch_stage = format!("image_encoder.layers.{stage}");
        for b in 0..vit.depths[stage] {
            let burn = format!("{burn_stage}.blocks.{b}");
            let torch = format!("{torch_stage}.blocks.{b}");
            m.copy(c, &format!("{burn}.attn.attention_biases"), &format!("{torch}.attn.attention_biases"))?;
            m.layer_norm(c, &format!("{burn}.attn.norm"), &format!("{torch}.attn.norm"))?;
            m.linear(c, &format!("{burn}.attn.qkv"), &format!("{torch}.attn.qkv"))?;
            m.linear(c, &format!("{burn}.attn.proj"), &format!("{torch}.attn.proj"))?;
            m.layer_norm(c, &format!("{burn}.mlp.norm"), &format!("{torch}.mlp.norm"))?;
            m.linear(c, &format!("{burn}.mlp.fc1"), &format!("{torch}.mlp.fc1"))?;
            m.linear(c, &format!("{burn}.mlp.fc2"), &format!("{torch}.mlp.fc2"))?;
            m.conv_bn(c, &format!("{burn}.local_conv"), &format!("{torch}.local_conv"))?;
        }
        if stage < 3 {
            for conv in ["conv1", "conv2", "conv3"] {
                m.conv_bn(c, &format!("{burn_stage}.downsample.{conv}"), &format!("{torch_stage}.downsample.{conv}"))?;
            }
        }
    }
    m.conv(c, "image_encoder.neck_conv1", "image_encoder.neck.0", false)?;
    m.layer_norm(c, "image_encoder.neck_norm1", "image_encoder.neck.1")?;
    m.conv(c, "image_encoder.neck_conv2", "image_encoder.neck.2", false)?;
    m.layer_norm(c, "image_encoder.neck_norm2", "image_encoder.neck.3")
}

fn map_prompt_encoder(m: &mut Mapped, c: &mut Checkpoint) -> Result<()> {
    let p = "prompt_encoder";
    m.copy(c, &format!("{p}.gaussian_matrix"), &format!("{p}.pe_layer.positional_encoding_gaussian_matrix"))?;
    for i in 0..4 {
        m.copy(c, &format!("{p}.point_embeddings.{i}"), &format!("{p}.point_embeddings.{i}.weight"))?;
    }
    m.copy(c, &format!("{p}.not_a_point_embed"), &format!("{p}.not_a_point_embed.weight"))?;
    m.copy(c, &format!("{p}.no_mask_embed"), &format!("{p}.no_mask_embed.weight"))?;
    m.conv(c, &format!("{p}.mask_conv1"), &format!("{p}.mask_downscaling.0"), true)?;
    m.layer_norm(c, &format!("{p}.mask_norm1"), &format!("{p}.mask_downscaling.1"))?;
    m.conv(c, &format!("{p}.mask_conv2"), &format!("{p}.mask_downscaling.3"), true)?;
    m.layer_norm(c, &format!("{p}.mask_norm2"), &format!("{p}.mask_downscaling.4"))?;
    m.conv(c, &format!("{p}.mask_conv3"), &format!("{p}.mask_downscaling.6"), true)
}

fn map_attention(m: &mut Mapped, c: &mut Checkpoint, burn: &str, torch: &str) -> Result<()> {
    for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        m.linear(c, &format!("{burn}.{proj}"), &format!("{torch}.{proj}"))?;
    }
    Ok(())
}

fn map_mask_decoder(m: &mut Mapped, c: &mut Checkpoint, config: &LiteMedSamConfig) -> Result<()> {
    let d = "mask_decoder";
    let t = "mask_decoder.transformer";
    for layer in 0..config.mask_decoder.transformer.depth {
        let l = format!("{t}.layers.{layer}");
        for attn in ["self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"] {
            map_attention(m, c, &format!("{l}.{attn}"), &format!("{l}.{attn}"))?;
        }
        for norm in ["norm1", "norm2", "norm3", "norm4"] {
            m.layer_norm(c, &format!("{l}.{norm}"), &format!("{l}.{norm}"))?;
        }
        m.linear(c, &format!("{l}.mlp_lin1"), &format!("{l}.mlp.lin1"))?;
        m.linear(c, &format!("{l}.mlp_lin2"), &format!("{l}.mlp.lin2"))?;
    }
    map_attention(m, c, &format!("{t}.final_attn_token_to_image"), &format!("{t}.final_attn_token_to_image"))?;
    m.layer_norm(c, &format!("{t}.norm_final_attn"), &format!("{t}.norm_final_attn"))?;
    m.copy(c, &format!("{d}.iou_token"), &format!("{d}.iou_token.weight"))?;
    m.copy(c, &format!("{d}.mask_tokens"), &format!("{d}.mask_tokens.weight"))?;
    m.conv(c, &format!("{d}.upscale_conv1"), &format!("{d}.output_upscaling.0"), true)?;
    m.layer_norm(c, &format!("{d}.upscale_norm"), &format!("{d}.output_upscaling.1"))?;
    m.conv(c, &format!("{d}.upscale_conv2"), &format!("{d}.output_upscaling.3"), true)?;
    for h in 0..config.mask_decoder.num_multimask_outputs + 1 {
        for layer in 0..3 {
            m.linear(c, &format!("{d}.hypernetworks.{h}.layers.{layer}"), &format!("{d}.output_hypernetworks_mlps.{h}.layers.{layer}"))?;
        }
    }
    for layer in 0..config.mask_decoder.iou_head_depth {
        m.linear(c, &format!("{d}.iou_head.layers.{layer}"), &format!("{d}.iou_prediction_head.layers.{layer}"))?;
    }
    Ok(())
}

/// Reads `lite_medsam.pth` and returns the f32 Burn model. The file must already have been
/// verified against the manifest (see `crate::weights::verify`).
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<LiteMedSam> {
    let config = LiteMedSamConfig::default();
    let mut ckpt = Checkpoint::read(path)?;
    let mut mapped = Mapped { tensors: Vec::new() };
    map_image_encoder(&mut mapped, &mut ckpt, &config)?;
    map_prompt_encoder(&mut mapped, &mut ckpt)?;
    map_mask_decoder(&mut mapped, &mut ckpt, &config)?;
    let unused = ckpt.unused();
    if !unused.is_empty() {
        return Err(Error::weights(&ckpt.file, format!("tensors not used by the model: {unused:?}")));
    }
    let mut model = config.init(device);
    let result = model.apply(mapped.tensors, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(Error::weights(
            &ckpt.file,
            format!("mapping incomplete: missing {:?}, unused {:?}, errors {:?}", result.missing, result.unused, result.errors),
        ));
    }
    Ok(model)
}
