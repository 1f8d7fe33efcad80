//! One decoding step on the CPU, computed on host vectors from the shipped 4-bit blocks.
//!
//! A step is one position through 30 layers. Through Burn that is ~30 tensor operations per
//! layer (norm, rotary embedding, attention, a concatenation that copies the whole KV cache),
//! each with its own allocation and dispatch for a few hundred numbers — more time than the
//! arithmetic. Here the step is plain loops over `Vec<f32>`: the products read the blocks
//! ([`BlockLinear`]), the keys and values are appended to a host cache, and the attention of the
//! new position over the cache is split over the heads. Prefill, batches, training and the GPU
//! keep Burn's path; the cache converts between the two on first use (see [`KvCache`]).

use burn::tensor::Tensor;

use super::block_linear::BlockLinear;
use super::llama::KvCache;

/// One layer's weights for the host step.
#[derive(Debug)]
pub struct BlockLayer {
    pub attn_norm: Vec<f32>,
    /// Rows of wq, then wk, then wv (one product reads the normalised input once).
    pub qkv: BlockLinear,
    pub wo: BlockLinear,
    pub ffn_norm: Vec<f32>,
    /// Rows of gate, then up.
    pub gate_up: BlockLinear,
    pub down: BlockLinear,
}

/// The whole decoder for host steps: every layer in blocks, the final norm and the output head.
#[derive(Debug)]
pub struct BlockDecoder {
    pub layers: Vec<BlockLayer>,
    pub norm: Vec<f32>,
    pub output: BlockLinear,
    pub rms_eps: f32,
    pub heads: usize,
    pub kv_heads: usize,
    /// `[max_sequence, head_dim / 2]` rotary tables, the same numbers as Burn's path reads.
    pub rope_cos: Vec<f32>,
    pub rope_sin: Vec<f32>,
}

impl BlockDecoder {
    pub fn hidden_size(&self) -> usize {
        self.norm.len()
    }

    fn head_dim(&self) -> usize {
        self.hidden_size() / self.heads
    }

    /// Width of one cached position's keys (and values): all KV heads side by side.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    /// The final-norm hidden state of input embedding `x` at position `cache.len()`, whose keys
    /// and values go into `cache`.
    pub fn step(&self, mut x: Vec<f32>, cache: &mut KvCache) -> Vec<f32> {
        let d = self.hidden_size();
        let position = cache.len();
        let kv_width = self.kv_width();
        for (index, layer) in self.layers.iter().enumerate() {
            let mut q = layer.qkv.forward(&rms_norm(&x, &layer.attn_norm, self.rms_eps));
            let mut k = q.split_off(d);
            let v = k.split_off(kv_width);
            self.rotate(&mut q, position);
            self.rotate(&mut k, position);
            let (keys, values) = cache.host_layer(index, &k, &v);
            let attended = self.attend(&q, keys, values);
            add(&mut x, &layer.wo.forward(&attended));
            let mut gate = layer.gate_up.forward(&rms_norm(&x, &layer.ffn_norm, self.rms_eps));
            let up = gate.split_off(gate.len() / 2);
            let hidden: Vec<f32> = gate.into_iter().zip(up).map(|(g, u)| g / (1.0 + libm::expf(-g)) * u).collect();
            add(&mut x, &layer.down.forward(&hidden));
        }
        cache.advance(1);
        rms_norm(&x, &self.norm, self.rms_eps)
    }

    /// Rotary embedding of every head in `x` at `position`, over adjacent pairs.
    fn rotate(&self, x: &mut [f32], position: usize) {
        let half = self.head_dim() / 2;
        let cos = &self.rope_cos[position * half..(position + 1) * half];
        let sin = &self.rope_sin[position * half..(position + 1) * half];
        for head in x.chunks_exact_mut(2 * half) {
            for (pair, (c, s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                let (even, odd) = (pair[0], pair[1]);
                pair[0] = even * c - odd * s;
                pair[1] = even * s + odd * c;
            }
        }
    }

    /// Softmax attention of each query head over every cached position of its KV head
    /// (grouped-query: `heads / kv_heads` query heads share one); `keys`, `values`: positions'
    /// rows of [`Self::kv_width`].
    fn attend(&self, q: &[f32], keys: &[f32], values: &[f32]) -> Vec<f32> {
        let head_dim = self.head_dim();
        let kv_width = self.kv_width();
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let one_head = |(head, out): (usize, &mut [f32])| {
            let kv = (head / group) * head_dim;
            let query = &q[head * head_dim..(head + 1) * head_dim];
            let mut scores: Vec<f32> = keys.chunks_exact(kv_width).map(|row| dot(query, &row[kv..kv + head_dim]) * scale).collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut total = 0.0;
            for s in &mut scores {
                *s = libm::expf(*s - max);
                total += *s;
            }
            out.fill(0.0);
            for (p, row) in scores.iter().zip(values.chunks_exact(kv_width)) {
                let weight = p / total;
                for (o, v) in out.iter_mut().zip(&row[kv..kv + head_dim]) {
                    *o += weight * v;
                }
            }
        };
        let mut out = vec![0.0f32; self.heads * head_dim];
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            out.par_chunks_mut(head_dim).enumerate().for_each(one_head);
        }
        #[cfg(target_arch = "wasm32")]
        out.chunks_mut(head_dim).enumerate().for_each(one_head);
        out
    }

    /// Next-token logits `[1, vocab]` for a final-norm hidden state.
    pub fn logits(&self, hidden: &[f32], device: &burn::tensor::Device) -> Tensor<2> {
        let logits = self.output.forward(hidden);
        let vocab = logits.len();
        Tensor::<1>::from_floats(logits.as_slice(), device).reshape([1, vocab])
    }
}

/// `x / sqrt(mean(x²) + eps) · gamma`, as Burn's `RmsNorm`.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let rms = (mean_square + eps).sqrt();
    x.iter().zip(gamma).map(|(v, g)| v / rms * g).collect()
}

fn add(x: &mut [f32], delta: &[f32]) {
    x.iter_mut().zip(delta).for_each(|(a, b)| *a += b);
}

/// Dot product in eight independent lanes, which the compiler turns into SIMD (a single running
/// sum would pin the order of the additions and stay scalar).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_and_dot_match_their_definitions() {
        let x: Vec<f32> = (0..19).map(|i| i as f32 * 0.37 - 3.0).collect();
        let gamma: Vec<f32> = (0..19).map(|i| 1.0 + i as f32 * 0.01).collect();
        let rms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / 19.0 + 1e-5).sqrt();
        for ((got, v), g) in rms_norm(&x, &gamma, 1e-5).iter().zip(&x).zip(&gamma) {
            assert!((*got as f64 - *v as f64 / rms * *g as f64).abs() < 1e-5);
        }
        let exact: f64 = x.iter().zip(&gamma).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((dot(&x, &gamma) as f64 - exact).abs() < 1e-4, "19 values: 2 lanes of 8 and a tail of 3");
    }
}
