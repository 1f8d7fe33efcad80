//! LLaMA-architecture decoder (SmolLM2): RMSNorm, grouped-query attention with rotary position
//! embeddings, SwiGLU feed-forward, and an output head tied to the token embedding.
//!
//! The tied matrix is stored once, as the output head `[hidden, vocab]` (a `Linear`, so it can be
//! quantised like the others); token embedding is a column lookup in it.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use std::collections::BTreeMap;
use std::sync::Arc;

use super::block_linear::BlockLinear;
use super::block_step::{BlockDecoder, BlockLayer};
use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub ffn_size: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    /// Longest sequence (prompt + generated) the position tables cover.
    pub max_sequence: usize,
}

impl LlamaConfig {
    /// Reads the architecture from GGUF metadata (`llama.*` keys).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.require("general.architecture")?.as_str().unwrap_or_default();
        if arch != "llama" {
            return Err(Error::weights("GGUF", format!("architecture {arch:?} is not llama")));
        }
        let int = |key: &str| -> Result<usize> {
            g.require(key)?.as_u64().map(|v| v as usize).ok_or_else(|| Error::weights("GGUF", format!("{key} is not an integer")))
        };
        let float = |key: &str| -> Result<f64> {
            g.require(key)?.as_f64().ok_or_else(|| Error::weights("GGUF", format!("{key} is not a number")))
        };
        let config = Self {
            vocab_size: g.tensor("token_embd.weight")?.dims[1] as usize,
            hidden_size: int("llama.embedding_length")?,
            num_layers: int("llama.block_count")?,
            num_heads: int("llama.attention.head_count")?,
            num_kv_heads: int("llama.attention.head_count_kv")?,
            ffn_size: int("llama.feed_forward_length")?,
            rope_theta: float("llama.rope.freq_base")? as f32,
            rms_eps: float("llama.attention.layer_norm_rms_epsilon")?,
            max_sequence: int("llama.context_length")?.min(2048),
        };
        let heads_ok = config.num_heads > 0
            && config.num_kv_heads > 0
            && config.num_heads % config.num_kv_heads == 0
            && config.hidden_size % config.num_heads == 0
            && (config.hidden_size / config.num_heads) % 2 == 0;
        if !heads_ok {
            return Err(Error::weights("GGUF", format!("inconsistent attention shape {config:?}")));
        }
        Ok(config)
    }

    /// A 2-layer, 32-wide model for fast unit tests (random weights).
    pub fn tiny(max_sequence: usize) -> Self {
        Self {
            vocab_size: 64,
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            ffn_size: 64,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            max_sequence,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn init(&self, device: &Device) -> Llama {
        let d = self.hidden_size;
        let kv = self.num_kv_heads * self.head_dim();
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let norm = || RmsNormConfig::new(d).with_epsilon(self.rms_eps).init(device);
        Llama {
            layers: (0..self.num_layers)
                .map(|_| Block {
                    attn_norm: norm(),
                    wq: linear(d, d),
                    wk: linear(d, kv),
                    wv: linear(d, kv),
                    wo: linear(d, d),
                    ffn_norm: norm(),
                    gate: linear(d, self.ffn_size),
                    up: linear(d, self.ffn_size),
                    down: linear(self.ffn_size, d),
                })
                .collect(),
            norm: norm(),
            output: linear(d, self.vocab_size),
            rope: Rope::new(self.head_dim(), self.max_sequence, self.rope_theta, device),
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            block_decoder: None,
        }
    }
}

/// Rotary position embedding over adjacent pairs `(x[2i], x[2i+1])` — the layout GGUF's llama
/// q/k weights are stored in (llama.cpp "normal" RoPE).
#[derive(Module, Debug)]
pub struct Rope {
    // Constant tensors (not parameters): not in the record, but they move with `to_device`.
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    fn new(head_dim: usize, max_sequence: usize, theta: f32, device: &Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_sequence * half);
        let mut sin = Vec::with_capacity(max_sequence * half);
        for pos in 0..max_sequence {
            for i in 0..half {
                let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [max_sequence, half]), device),
            sin: Tensor::from_data(TensorData::new(sin, [max_sequence, half]), device),
        }
    }

    pub fn max_sequence(&self) -> usize {
        self.cos.dims()[0]
    }

    /// `x`: `[batch, heads, seq, head_dim]` at positions `start..start + seq`.
    fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let half = d / 2;
        let cos = self.cos.clone().slice([start..start + s, 0..half]).reshape([1, 1, s, half]);
        let sin = self.sin.clone().slice([start..start + s, 0..half]).reshape([1, 1, s, half]);
        let pairs = x.reshape([b, h, s, half, 2]);
        let even = pairs.clone().narrow(4, 0, 1).reshape([b, h, s, half]);
        let odd = pairs.narrow(4, 1, 1).reshape([b, h, s, half]);
        let rotated_even = even.clone() * cos.clone() - odd.clone() * sin.clone();
        let rotated_odd = even * sin + odd * cos;
        Tensor::stack::<5>(vec![rotated_even, rotated_odd], 4).reshape([b, h, s, d])
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: RmsNorm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// The values of a CPU tensor (immediately available, also in the browser).
fn host_values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().expect("f32 activations")
}

/// Keys and values of every layer for the positions seen so far. A layer's entry stays in the
/// form of the path that last used it: tensors for Burn's passes, host rows for the CPU's
/// one-position steps ([`BlockDecoder`]); it converts once when the other path takes over
/// (prefill → steps, and back for a later turn of a conversation).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
}

#[derive(Debug, Clone, Default)]
enum LayerKv {
    #[default]
    Empty,
    /// `[batch, kv_heads, len, head_dim]` each.
    Tensors(Tensor<4>, Tensor<4>),
    /// One row per position: every KV head's `head_dim` values side by side (`width` in all).
    Host { keys: Vec<f32>, values: Vec<f32>, width: usize },
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `len` positions (to re-use a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for layer in &mut self.layers {
            match layer {
                LayerKv::Empty => {}
                LayerKv::Tensors(k, v) => {
                    let [b, h, _, d] = k.dims();
                    *k = k.clone().slice([0..b, 0..h, 0..len, 0..d]);
                    *v = v.clone().slice([0..b, 0..h, 0..len, 0..d]);
                }
                LayerKv::Host { keys, values, width } => {
                    keys.truncate(len * *width);
                    values.truncate(len * *width);
                }
            }
        }
        self.len = len;
    }

    fn layer(&mut self, layer: usize) -> &mut LayerKv {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, LayerKv::Empty);
        }
        &mut self.layers[layer]
    }

    /// Burn's path: appends `k`, `v` (`[batch, kv_heads, s, head_dim]`) and returns the layer's
    /// keys and values for every position.
    fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [_, kv_heads, _, head_dim] = k.dims();
        let device = k.device();
        let entry = self.layer(layer);
        let merged = match std::mem::take(entry) {
            LayerKv::Empty => (k, v),
            LayerKv::Tensors(pk, pv) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            LayerKv::Host { keys, values, .. } => {
                let tensor = |rows: Vec<f32>| {
                    let len = rows.len() / (kv_heads * head_dim);
                    Tensor::<1>::from_floats(rows.as_slice(), &device).reshape([1, len, kv_heads, head_dim]).swap_dims(1, 2)
                };
                (Tensor::cat(vec![tensor(keys), k], 2), Tensor::cat(vec![tensor(values), v], 2))
            }
        };
        *entry = LayerKv::Tensors(merged.0.clone(), merged.1.clone());
        merged
    }

    /// The host step's path: appends one position's `k`, `v` rows and returns the layer's rows
    /// for every position (keys, values).
    pub(crate) fn host_layer(&mut self, layer: usize, k: &[f32], v: &[f32]) -> (&[f32], &[f32]) {
        let width = k.len();
        let entry = self.layer(layer);
        if let LayerKv::Tensors(tk, tv) = entry {
            // `[1, kv_heads, len, head_dim]` → rows of `[kv_heads · head_dim]`.
            let rows = |t: &Tensor<4>| host_values(t.clone().swap_dims(1, 2));
            *entry = LayerKv::Host { keys: rows(tk), values: rows(tv), width };
        }
        if matches!(entry, LayerKv::Empty) {
            *entry = LayerKv::Host { keys: Vec::new(), values: Vec::new(), width };
        }
        let LayerKv::Host { keys, values, .. } = entry else { unreachable!("made host rows above") };
        keys.extend_from_slice(k);
        values.extend_from_slice(v);
        (keys, values)
    }

    /// Counts `positions` new positions, once every layer has appended them.
    pub(crate) fn advance(&mut self, positions: usize) {
        self.len += positions;
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>, layer: usize, cache: &mut KvCache, rope: &Rope, heads: usize, kv_heads: usize) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let head_dim = d / heads;
        let start = cache.len;

        let h = self.attn_norm.forward(x.clone());
        let q = self.wq.forward(h.clone()).reshape([b, s, heads, head_dim]).swap_dims(1, 2);
        let k = self.wk.forward(h.clone()).reshape([b, s, kv_heads, head_dim]).swap_dims(1, 2);
        let v = self.wv.forward(h).reshape([b, s, kv_heads, head_dim]).swap_dims(1, 2);
        let q = rope.apply(q, start);
        let k = rope.apply(k, start);
        let (k, v) = cache.append(layer, k, v);
        let total = start + s;

        // Grouped-query attention without copying K/V: the `rep` query heads sharing a KV head
        // are stacked along the sequence axis.
        let rep = heads / kv_heads;
        let q = q.reshape([b, kv_heads, rep * s, head_dim]);
        let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        let scores = if s > 1 {
            let mask = causal_mask(s, start, &scores.device()).repeat_dim(0, rep).reshape([1, 1, rep * s, total]);
            scores.mask_fill(mask, f32::NEG_INFINITY)
        } else {
            scores
        };
        let attn = softmax(scores, 3).matmul(v).reshape([b, heads, s, head_dim]).swap_dims(1, 2).reshape([b, s, d]);
        let x = x + self.wo.forward(attn);
        let h = self.ffn_norm.forward(x.clone());
        x + self.down.forward(silu(self.gate.forward(h.clone())) * self.up.forward(h))
    }
}

/// `[s, start + s]`, true where key position > query position (masked).
fn causal_mask(s: usize, start: usize, device: &Device) -> Tensor<2, Bool> {
    let total = start + s;
    let q = Tensor::<1, Int>::arange(start as i64..total as i64, device).reshape([s, 1]);
    let k = Tensor::<1, Int>::arange(0..total as i64, device).reshape([1, total]);
    k.greater(q)
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct LlamaOutput {
    /// Last-layer hidden states after the final norm, `[batch, seq, hidden]`.
    pub hidden: Tensor<3>,
}

#[derive(Module, Debug)]
pub struct Llama {
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// Output head `[hidden, vocab]`, tied to the token embedding.
    pub output: Linear,
    pub rope: Rope,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// The whole model in the shipped 4-bit blocks, for one-position steps on the CPU.
    #[module(skip)]
    pub block_decoder: Option<Arc<BlockDecoder>>,
}

impl Llama {
    pub fn vocab_size(&self) -> usize {
        self.output.weight.dims()[1]
    }

    pub fn hidden_size(&self) -> usize {
        self.output.weight.dims()[0]
    }

    /// Attaches the host step ([`BlockDecoder`]) when every layer's seven projections and the
    /// output head came in 4-bit blocks (named by their record paths, e.g.
    /// `layers.3.wq.weight`); otherwise every step keeps Burn's path. Call on the CPU, where the
    /// model is loaded: the norms and rotary tables are copied out of their tensors.
    pub fn with_blocks(mut self, mut blocks: BTreeMap<String, BlockLinear>) -> Self {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let mut take = |name: &str| blocks.remove(&format!("layers.{i}.{name}.weight"));
            let projections = (take("wq"), take("wk"), take("wv"), take("wo"), take("gate"), take("up"), take("down"));
            let (Some(wq), Some(wk), Some(wv), Some(wo), Some(gate), Some(up), Some(down)) = projections else { return self };
            layers.push(BlockLayer {
                attn_norm: host_values(layer.attn_norm.gamma.val()),
                qkv: BlockLinear::stack_rows(vec![wq, wk, wv]),
                wo,
                ffn_norm: host_values(layer.ffn_norm.gamma.val()),
                gate_up: BlockLinear::stack_rows(vec![gate, up]),
                down,
            });
        }
        let Some(output) = blocks.remove("output.weight") else { return self };
        self.block_decoder = Some(Arc::new(BlockDecoder {
            layers,
            norm: host_values(self.norm.gamma.val()),
            output,
            rms_eps: self.norm.epsilon as f32,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            rope_cos: host_values(self.rope.cos.clone()),
            rope_sin: host_values(self.rope.sin.clone()),
        }));
        self
    }

    /// The model on Burn's f32 path alone (the block kernels detached): what a GPU, which always
    /// takes that path, computes.
    pub fn without_blocks(&self) -> Self {
        Self { block_decoder: None, ..self.clone() }
    }

    /// The host step, where it applies: blocks attached, and the model on the CPU outside
    /// autodiff (on a GPU each product would be a round trip; training needs Burn's graph).
    fn host_decoder(&self) -> Option<&BlockDecoder> {
        let device = self.output.weight.device();
        self.block_decoder.as_deref().filter(|_| device == Device::flex() && !device.is_autodiff())
    }

    /// Token ids `[batch, seq]` → input embeddings `[batch, seq, hidden]`.
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = tokens.dims();
        let weight = self.output.weight.val();
        let weight = if weight.dtype().is_float() { weight } else { weight.dequantize() };
        weight.select(1, tokens.reshape([b * s])).swap_dims(0, 1).reshape([b, s, self.hidden_size()])
    }

    /// Runs the decoder over input embeddings at the positions after those already cached.
    pub fn forward_embeddings(&self, embeddings: Tensor<3>, cache: &mut KvCache) -> Result<LlamaOutput> {
        let [_, s, _] = embeddings.dims();
        self.check_room(cache, s)?;
        let mut x = embeddings;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, i, cache, &self.rope, self.num_heads, self.num_kv_heads);
        }
        cache.len += s;
        Ok(LlamaOutput { hidden: self.norm.forward(x) })
    }

    /// An error when `positions` more would not fit the rotary tables.
    fn check_room(&self, cache: &KvCache, positions: usize) -> Result<()> {
        if cache.len + positions > self.rope.max_sequence() {
            return Err(Error::Prompt(format!(
                "the conversation is too long ({} tokens, at most {})",
                cache.len + positions,
                self.rope.max_sequence()
            )));
        }
        Ok(())
    }

    pub fn forward_tokens(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Result<LlamaOutput> {
        self.forward_embeddings(self.embed(tokens), cache)
    }

    /// One generation step: the logits `[1, vocab]` of the token after `token`, which goes into
    /// the cache. Runs on a worker of the thread pool: a step is ~120 small parallel products
    /// (`block_linear`), and from outside the pool each would be handed over to the workers while
    /// the calling thread sleeps until it is done (three threads on two cores, woken ~120 times per
    /// token); on a worker, a product splits with the other worker directly.
    pub fn next_token_logits(&self, token: u32, cache: &mut KvCache) -> Result<Tensor<2>> {
        #[cfg(not(target_arch = "wasm32"))]
        return rayon::scope(|_| self.step(token, cache));
        #[cfg(target_arch = "wasm32")]
        self.step(token, cache)
    }

    fn step(&self, token: u32, cache: &mut KvCache) -> Result<Tensor<2>> {
        let device = self.output.weight.device();
        let input = Tensor::<2, Int>::from_data(TensorData::new(vec![token as i64], [1, 1]), &device);
        let Some(decoder) = self.host_decoder() else {
            return Ok(self.last_logits(self.forward_tokens(input, cache)?.hidden));
        };
        self.check_room(cache, 1)?;
        let hidden = decoder.step(host_values(self.embed(input)), cache);
        Ok(decoder.logits(&hidden, &device))
    }

    /// Next-token logits `[batch, vocab]` from the hidden state at the last position.
    pub fn last_logits(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [b, s, d] = hidden.dims();
        let last = hidden.narrow(1, s - 1, 1);
        match self.host_decoder().filter(|_| b == 1) {
            Some(decoder) => decoder.logits(&host_values(last), &self.output.weight.device()),
            None => self.output.forward(last.reshape([b, d])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::generate::{generate, GenerateOptions, Sampling, StopReason};
    use crate::segment::read_f32;
    use futures_lite::future::block_on;

    fn tiny() -> Llama {
        LlamaConfig::tiny(32).init(&Device::flex())
    }

    fn tokens(ids: &[i64]) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Device::flex())
    }

    /// The model with every matrix drawn from a fixed seed and rounded to 4-bit blocks (the
    /// output head to `Q4_0`, the others to `Q4_1`, as shipped): once with the blocks attached,
    /// once with only their f32 expansion, which is what Burn computes with. The seed is ours,
    /// not Burn's: its generator is one process-wide state that parallel tests draw from, so a
    /// model made from it differs from run to run and so would the rounding error measured.
    fn tiny_in_blocks() -> (Llama, Llama) {
        use crate::weights::gguf::{dequantize, quantize, TensorType};
        let device = Device::flex();
        let mut model = tiny();
        let mut blocks = BTreeMap::new();
        let mut rng = crate::rng::SplitMix64::new(0x11a3a);
        let mut round = |name: String, linear: &mut Linear, kind: TensorType| {
            let [inputs, outputs] = linear.weight.dims();
            // Burn's default range for a linear layer: uniform within ±1/√inputs.
            let bound = 1.0 / (inputs as f64).sqrt();
            let rows: Vec<f32> = (0..inputs * outputs).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
            let raw = quantize(kind, &rows);
            let expanded = dequantize(kind, &raw);
            let weight: Vec<f32> = (0..inputs).flat_map(|i| (0..outputs).map(move |o| (i, o))).map(|(i, o)| expanded[o * inputs + i]).collect();
            linear.weight = burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(weight, [inputs, outputs]), &device));
            blocks.insert(name, BlockLinear::from_blocks(kind, outputs, &raw).unwrap().unwrap());
        };
        for (i, layer) in model.layers.iter_mut().enumerate() {
            for (name, linear) in [("wq", &mut layer.wq), ("wk", &mut layer.wk), ("wv", &mut layer.wv), ("wo", &mut layer.wo), ("gate", &mut layer.gate), ("up", &mut layer.up), ("down", &mut layer.down)] {
                round(format!("layers.{i}.{name}.weight"), linear, TensorType::Q4_1);
            }
        }
        round("output.weight".into(), &mut model.output, TensorType::Q4_0);
        (model.clone().with_blocks(blocks), model)
    }

    /// Host steps read the blocks and keep a host KV cache; they must follow what Burn's f32
    /// path gives on the expanded matrices, step after step, and a later multi-position pass
    /// (a conversation's next turn) must read the keys and values the steps left.
    #[test]
    fn block_steps_equal_the_f32_path() {
        let (with_blocks, plain) = tiny_in_blocks();
        assert!(with_blocks.host_decoder().is_some() && plain.host_decoder().is_none());
        let (mut cache_a, mut cache_b) = (KvCache::new(), KvCache::new());
        let close = |a: Tensor<2>, b: Tensor<2>, what: &str| {
            let (a, b) = (a.into_data().try_to_vec::<f32>().unwrap(), b.into_data().try_to_vec::<f32>().unwrap());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            // The blocks read the input rounded to 8 bits per block of 32 (~1 % here, through
            // every layer of a random model); a misplaced cache entry, position or row moves
            // logits by their own size.
            let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(worst < 0.05 * largest, "{what}: max |Δ logit| {worst}, largest |logit| {largest}");
        };
        let prefill = |model: &Llama, cache: &mut KvCache, ids: &[i64]| model.last_logits(model.forward_tokens(tokens(ids), cache).unwrap().hidden);
        close(prefill(&with_blocks, &mut cache_a, &[3, 17, 42]), prefill(&plain, &mut cache_b, &[3, 17, 42]), "prefill");
        for step in 0..5u32 {
            let token = (step * 11 + 5) % 64;
            close(with_blocks.next_token_logits(token, &mut cache_a).unwrap(), plain.next_token_logits(token, &mut cache_b).unwrap(), &format!("step {step}"));
        }
        close(prefill(&with_blocks, &mut cache_a, &[8, 9]), prefill(&plain, &mut cache_b, &[8, 9]), "next turn");
        close(with_blocks.next_token_logits(30, &mut cache_a).unwrap(), plain.next_token_logits(30, &mut cache_b).unwrap(), "step after it");
        assert_eq!((cache_a.len(), cache_b.len()), (11, 11));
        // Truncating host rows keeps a shared prefix, as it does for tensors.
        cache_a.truncate(4);
        cache_b.truncate(4);
        close(with_blocks.next_token_logits(7, &mut cache_a).unwrap(), plain.next_token_logits(7, &mut cache_b).unwrap(), "after truncate");
    }

    #[test]
    fn cached_decoding_equals_one_full_pass() {
        let model = tiny();
        let ids = [3, 17, 42, 5, 9, 11];
        let full = model.forward_tokens(tokens(&ids), &mut KvCache::new()).unwrap().hidden;
        let mut cache = KvCache::new();
        let mut steps = vec![model.forward_tokens(tokens(&ids[..4]), &mut cache).unwrap().hidden];
        for &id in &ids[4..] {
            steps.push(model.forward_tokens(tokens(&[id]), &mut cache).unwrap().hidden);
        }
        assert_eq!(cache.len(), ids.len());
        let stepped = Tensor::cat(steps, 1);
        let err = (full - stepped).abs().max().into_scalar::<f32>();
        assert!(err < 1e-5, "cached and uncached passes differ by {err}");
    }

    #[test]
    fn later_tokens_do_not_change_earlier_states() {
        let model = tiny();
        let a = model.forward_tokens(tokens(&[1, 2, 3]), &mut KvCache::new()).unwrap().hidden;
        let b = model.forward_tokens(tokens(&[1, 2, 3, 60, 61]), &mut KvCache::new()).unwrap().hidden;
        let err = (a - b.narrow(1, 0, 3)).abs().max().into_scalar::<f32>();
        assert!(err < 1e-5, "causal mask leaks: {err}");
    }

    #[test]
    fn generation_can_be_cancelled_and_is_bounded() {
        let model = tiny();
        let run = |max_tokens, cancel_after: usize| {
            let mut cache = KvCache::new();
            let out = model.forward_tokens(tokens(&[1, 2]), &mut cache).unwrap();
            let options = GenerateOptions { max_tokens, sampling: Sampling::Greedy, stop_tokens: vec![], no_repeat_ngram: 0 };
            let mut seen = 0;
            block_on(generate(&model, &mut cache, model.last_logits(out.hidden), &options, |_| {
                seen += 1;
                seen < cancel_after
            }))
            .unwrap()
        };
        let cancelled = run(10, 3);
        assert_eq!((cancelled.tokens.len(), cancelled.stop), (3, StopReason::Cancelled));
        let bounded = run(5, usize::MAX);
        assert_eq!((bounded.tokens.len(), bounded.stop), (5, StopReason::MaxTokens));
    }

    #[test]
    fn too_long_inputs_are_errors() {
        let model = tiny();
        let ids: Vec<i64> = (0..40).collect();
        assert!(model.forward_tokens(tokens(&ids), &mut KvCache::new()).is_err());
        // Embeddings are the token's column of the tied head.
        let e = block_on(read_f32(model.embed(tokens(&[7])))).unwrap();
        let column = block_on(read_f32(model.output.weight.val().narrow(1, 7, 1))).unwrap();
        assert_eq!(e, column);
    }
}
