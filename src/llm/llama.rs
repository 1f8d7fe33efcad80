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
                    blocks: None,
                })
                .collect(),
            norm: norm(),
            output: linear(d, self.vocab_size),
            rope: Rope::new(self.head_dim(), self.max_sequence, self.rope_theta, device),
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            output_blocks: None,
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
    /// The same projections in the shipped 4-bit blocks, for one-position steps on the CPU.
    #[module(skip)]
    pub blocks: Option<Arc<LayerBlocks>>,
}

/// A layer's projections as [`BlockLinear`]s (present when the weights were loaded from blocks).
/// The products that read the same input are stacked into one (q, k, v; gate, up): four
/// products per layer instead of seven, each split over the threads once.
#[derive(Debug)]
pub struct LayerBlocks {
    /// Rows of wq, then wk, then wv.
    pub qkv: BlockLinear,
    pub wo: BlockLinear,
    /// Rows of gate, then up.
    pub gate_up: BlockLinear,
    pub down: BlockLinear,
}

/// Whether a `[1, 1, n]` activation is one position on the CPU, where the block path applies
/// (on a GPU each projection would become a round trip; autodiff needs Burn's graph).
fn one_position_on_cpu(x: &Tensor<3>) -> bool {
    let device = x.device();
    x.dims()[..2] == [1, 1] && device == Device::flex() && !device.is_autodiff()
}

/// The values of a CPU tensor (immediately available, also in the browser).
fn host_values(x: Tensor<3>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().expect("f32 activations")
}

fn position_tensor(values: Vec<f32>, device: &Device) -> Tensor<3> {
    let n = values.len();
    Tensor::<1>::from_floats(values.as_slice(), device).reshape([1, 1, n])
}

/// Keys and values of every layer for the positions seen so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
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
        for (k, v) in self.layers.iter_mut().flatten() {
            let [b, h, _, d] = k.dims();
            *k = k.clone().slice([0..b, 0..h, 0..len, 0..d]);
            *v = v.clone().slice([0..b, 0..h, 0..len, 0..d]);
        }
        self.len = len;
    }

    fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let merged = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some(merged.clone());
        merged
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>, layer: usize, cache: &mut KvCache, rope: &Rope, heads: usize, kv_heads: usize) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let head_dim = d / heads;
        let start = cache.len;

        let blocks = self.blocks.as_deref().filter(|_| one_position_on_cpu(&x));
        let device = x.device();

        let h = self.attn_norm.forward(x.clone());
        let (q, k, v) = match blocks {
            Some(blocks) => {
                let mut q = blocks.qkv.forward(&host_values(h));
                let mut k = q.split_off(d);
                let v = k.split_off(kv_heads * head_dim);
                (position_tensor(q, &device), position_tensor(k, &device), position_tensor(v, &device))
            }
            None => (self.wq.forward(h.clone()), self.wk.forward(h.clone()), self.wv.forward(h)),
        };
        let q = q.reshape([b, s, heads, head_dim]).swap_dims(1, 2);
        let k = k.reshape([b, s, kv_heads, head_dim]).swap_dims(1, 2);
        let v = v.reshape([b, s, kv_heads, head_dim]).swap_dims(1, 2);
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
        let Some(blocks) = blocks else {
            let x = x + self.wo.forward(attn);
            let h = self.ffn_norm.forward(x.clone());
            return x + self.down.forward(silu(self.gate.forward(h.clone())) * self.up.forward(h));
        };
        let x = x + position_tensor(blocks.wo.forward(&host_values(attn)), &device);
        let h = host_values(self.ffn_norm.forward(x.clone()));
        let mut gate = blocks.gate_up.forward(&h);
        let up = gate.split_off(gate.len() / 2);
        let hidden: Vec<f32> = gate.into_iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        x + position_tensor(blocks.down.forward(&hidden), &device)
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
    /// The output head in the shipped 4-bit blocks, for one sequence's next-token logits on the CPU.
    #[module(skip)]
    pub output_blocks: Option<Arc<BlockLinear>>,
}

impl Llama {
    pub fn vocab_size(&self) -> usize {
        self.output.weight.dims()[1]
    }

    pub fn hidden_size(&self) -> usize {
        self.output.weight.dims()[0]
    }

    /// Gives the layers whose seven projections all came in 4-bit blocks (named by their record
    /// paths, e.g. `layers.3.wq.weight`), and the output head, the block path for one-position
    /// steps; layers with any other matrix keep Burn's path.
    pub fn with_blocks(mut self, mut blocks: BTreeMap<String, BlockLinear>) -> Self {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let mut take = |name: &str| blocks.remove(&format!("layers.{i}.{name}.weight"));
            let projections = (take("wq"), take("wk"), take("wv"), take("wo"), take("gate"), take("up"), take("down"));
            if let (Some(wq), Some(wk), Some(wv), Some(wo), Some(gate), Some(up), Some(down)) = projections {
                let qkv = BlockLinear::stack_rows(vec![wq, wk, wv]);
                let gate_up = BlockLinear::stack_rows(vec![gate, up]);
                layer.blocks = Some(Arc::new(LayerBlocks { qkv, wo, gate_up, down }));
            }
        }
        self.output_blocks = blocks.remove("output.weight").map(Arc::new);
        self
    }

    /// The model on Burn's f32 path alone (the block kernels detached): what a GPU, which always
    /// takes that path, computes.
    pub fn without_blocks(&self) -> Self {
        let mut model = self.clone();
        model.layers.iter_mut().for_each(|layer| layer.blocks = None);
        model.output_blocks = None;
        model
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
        if cache.len + s > self.rope.max_sequence() {
            return Err(Error::Prompt(format!(
                "the conversation is too long ({} tokens, at most {})",
                cache.len + s,
                self.rope.max_sequence()
            )));
        }
        let mut x = embeddings;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, i, cache, &self.rope, self.num_heads, self.num_kv_heads);
        }
        cache.len += s;
        Ok(LlamaOutput { hidden: self.norm.forward(x) })
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
        let input = Tensor::<2, Int>::from_data(TensorData::new(vec![token as i64], [1, 1]), &self.output.weight.device());
        Ok(self.last_logits(self.forward_tokens(input, cache)?.hidden))
    }

    /// Next-token logits `[batch, vocab]` from the hidden state at the last position.
    pub fn last_logits(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [b, s, d] = hidden.dims();
        let last = hidden.narrow(1, s - 1, 1);
        match self.output_blocks.as_deref().filter(|_| one_position_on_cpu(&last)) {
            Some(output) => {
                let device = last.device();
                Tensor::<1>::from_floats(output.forward(&host_values(last)).as_slice(), &device).reshape([1, self.vocab_size()])
            }
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

    /// The model with every matrix rounded to 4-bit blocks (the output head to `Q4_0`, the
    /// others to `Q4_1`, as shipped): once with the blocks attached, once with only their f32
    /// expansion, which is what Burn computes with.
    fn tiny_in_blocks() -> (Llama, Llama) {
        use crate::weights::gguf::{dequantize, quantize, TensorType};
        let device = Device::flex();
        let mut model = tiny();
        let mut blocks = BTreeMap::new();
        let mut round = |name: String, linear: &mut Linear, kind: TensorType| {
            let [inputs, outputs] = linear.weight.dims();
            let values = linear.weight.val().into_data().try_to_vec::<f32>().unwrap();
            let rows: Vec<f32> = (0..outputs).flat_map(|o| (0..inputs).map(move |i| (o, i))).map(|(o, i)| values[i * outputs + o]).collect();
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

    /// One-position steps read the blocks; they must follow what Burn's f32 path gives on the
    /// expanded matrices, step after step (the KV cache included).
    #[test]
    fn block_steps_equal_the_f32_path() {
        let (with_blocks, plain) = tiny_in_blocks();
        assert!(with_blocks.layers.iter().all(|l| l.blocks.is_some()) && with_blocks.output_blocks.is_some());
        let (mut cache_a, mut cache_b) = (KvCache::new(), KvCache::new());
        let mut inputs = vec![3, 17, 42];
        for step in 0..5 {
            let a = with_blocks.last_logits(with_blocks.forward_tokens(tokens(&inputs), &mut cache_a).unwrap().hidden);
            let b = plain.last_logits(plain.forward_tokens(tokens(&inputs), &mut cache_b).unwrap().hidden);
            let (a, b) = (a.into_data().try_to_vec::<f32>().unwrap(), b.into_data().try_to_vec::<f32>().unwrap());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            // The blocks read the input rounded to 8 bits per block of 32 (~1 % here, through
            // every layer of a random model); a misplaced cache entry or row moves logits by
            // their own size.
            let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(worst < 0.05 * largest, "step {step}: max |Δ logit| {worst}, largest |logit| {largest}");
            inputs = vec![(step * 11 + 5) % 64];
        }
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
            let options = GenerateOptions { max_tokens, sampling: Sampling::Greedy, stop_tokens: vec![] };
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
