//! LLaMA-architecture decoder (SmolLM2): RMSNorm, grouped-query attention with rotary position
//! embeddings, SwiGLU feed-forward, and an output head tied to the token embedding.
//!
//! The tied matrix is stored once, as the output head `[hidden, vocab]` (a `Linear`, so it can be
//! quantised like the others); token embedding is a column lookup in it.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

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
            ffn_size: 48,
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
}

impl Llama {
    pub fn vocab_size(&self) -> usize {
        self.output.weight.dims()[1]
    }

    pub fn hidden_size(&self) -> usize {
        self.output.weight.dims()[0]
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

    /// Next-token logits `[batch, vocab]` from the hidden state at the last position.
    pub fn last_logits(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [b, s, d] = hidden.dims();
        let last = hidden.narrow(1, s - 1, 1).reshape([b, d]);
        self.output.forward(last)
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
