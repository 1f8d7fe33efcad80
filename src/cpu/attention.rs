//! Multi-head attention, `softmax(q·kᵀ·scale + bias)·v`, on the CPU: each (batch, head, block
//! of queries) is one task whose scores stay in a reused buffer, and the heads are read where
//! they lie in the projections' rows. Burn's ops make each step a pass over all the scores into
//! a fresh buffer, and move the heads into their own axis and back.

use super::softmax::softmax_rows;
use super::{run_tasks, SharedOutput};

/// Where an operand's heads lie in its row-major values: head `h` of token `t` of batch `b` is
/// the `head_dim` values from `(b·tokens + t)·row_stride + first + h·head_stride`.
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout {
    pub first: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

/// One of q, k and v: its values and where its heads lie in them.
#[derive(Clone, Copy)]
pub struct HeadOperand<'a> {
    pub values: &'a [f32],
    pub layout: HeadLayout,
}

#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batches: usize,
    pub queries: usize,
    pub keys: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Tasks per call to aim for: enough to share among the threads. Fewer, larger tasks make
/// fewer, larger products (the decoder's 4096 queries over 7 keys ran 3× slower in blocks of
/// 256 queries).
const TASKS_PER_CALL: usize = 16;
/// Most scores one task holds (1 MiB).
const SCORES_PER_TASK: usize = 1 << 18;

/// `softmax(q·kᵀ·scale + bias)·v` per batch and head, into `[batches, queries, heads·head_dim]`.
/// `bias`, when given, is `[heads, queries, keys]` and the same for every batch.
pub fn attention(q: HeadOperand, k: HeadOperand, v: HeadOperand, bias: Option<&[f32]>, scale: f32, shape: AttentionShape) -> Vec<f32> {
    let AttentionShape { batches, queries, keys, heads, head_dim } = shape;
    assert!(keys > 0, "attention over no keys");
    for (operand, tokens) in [(&q, queries), (&k, keys), (&v, keys)] {
        let HeadLayout { first, head_stride, row_stride } = operand.layout;
        assert!(first + (heads - 1) * head_stride + head_dim <= row_stride, "heads inside a row");
        assert!(operand.values.len() >= batches * tokens * row_stride, "operand shorter than its shape");
    }
    assert!(bias.is_none_or(|b| b.len() == heads * queries * keys), "bias shape");
    let out_row = heads * head_dim;
    let total = batches * queries * out_row;
    let mut out = Vec::with_capacity(total);
    let target = SharedOutput(out.as_mut_ptr());
    let blocks_wanted = TASKS_PER_CALL.div_ceil(batches * heads).max((queries * keys).div_ceil(SCORES_PER_TASK));
    let block_size = queries.div_ceil(blocks_wanted.clamp(1, queries.max(1))).max(1);
    let blocks = queries.div_ceil(block_size);
    let task = |scores: &mut Vec<f32>, index: usize| {
        let (batch, head, block) = (index / (heads * blocks), index / blocks % heads, index % blocks);
        let first_query = block * block_size;
        let rows = block_size.min(queries - first_query);
        let head_of = |operand: &HeadOperand, token: usize| {
            let layout = operand.layout;
            operand.values[token * layout.row_stride + layout.first + head * layout.head_stride..].as_ptr()
        };
        scores.clear();
        match bias {
            Some(bias) => scores.extend_from_slice(&bias[(head * queries + first_query) * keys..][..rows * keys]),
            None => scores.resize(rows * keys, 0.0),
        }
        // SAFETY: every row and column the strides reach lies inside the operands (asserted
        // above), `scores` (rows × keys), and this task's rows and head columns of the output,
        // which no other task writes.
        unsafe {
            // scores = bias + scale · q·kᵀ
            gemm::gemm(
                rows, keys, head_dim,
                scores.as_mut_ptr(), 1, keys as isize, bias.is_some(),
                head_of(&q, batch * queries + first_query), 1, q.layout.row_stride as isize,
                head_of(&k, batch * keys), k.layout.row_stride as isize, 1,
                1.0, scale, false, false, false,
                gemm::Parallelism::None,
            );
        }
        softmax_rows(scores, keys);
        unsafe {
            // this head's columns of the output rows = softmax(scores)·v
            gemm::gemm(
                rows, head_dim, keys,
                target.at((batch * queries + first_query) * out_row + head * head_dim), 1, out_row as isize, false,
                scores.as_ptr(), 1, keys as isize,
                head_of(&v, batch * keys), 1, v.layout.row_stride as isize,
                0.0, 1.0, false, false, false,
                gemm::Parallelism::None,
            );
        }
    };
    run_tasks(batches * heads * blocks, Vec::new, task);
    // SAFETY: the tasks cover every (batch, query, head) and `gemm` wrote each one's values.
    unsafe { out.set_len(total) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the formula in f64: q, k and v in separate buffers with heads side by side, more
    /// queries than one task takes, two batches, with and without a bias. A head read from its
    /// neighbour's columns, a batch's keys taken from another or a query block written to the
    /// wrong rows moves it far beyond the bound.
    #[test]
    fn attention_equals_the_formula() {
        // 2 batches × 3 heads take 3 blocks of queries each, the last one shorter.
        let shape = AttentionShape { batches: 2, queries: 293, keys: 9, heads: 3, head_dim: 4 };
        let AttentionShape { batches, queries, keys, heads, head_dim } = shape;
        let width = heads * head_dim;
        let value = |i: usize, salt: usize| (((i + salt) * 7919 % 1009) as f32 / 504.5 - 1.0) * 1.5;
        let q: Vec<f32> = (0..batches * queries * width).map(|i| value(i, 1)).collect();
        let k: Vec<f32> = (0..batches * keys * width).map(|i| value(i, 2)).collect();
        let v: Vec<f32> = (0..batches * keys * width).map(|i| value(i, 3)).collect();
        let bias: Vec<f32> = (0..heads * queries * keys).map(|i| value(i, 4)).collect();
        let layout = HeadLayout { first: 0, head_stride: head_dim, row_stride: width };
        let operand = |values| HeadOperand { values, layout };
        let scale = 0.4;
        for bias in [None, Some(bias.as_slice())] {
            let got = attention(operand(&q), operand(&k), operand(&v), bias, scale, shape);
            for (b, t, h) in (0..batches).flat_map(|b| (0..queries).flat_map(move |t| (0..heads).map(move |h| (b, t, h)))) {
                // Value i of head h of a token of batch b in an operand of `tokens` rows per batch.
                let at = |x: &[f32], tokens: usize, token: usize, i: usize| x[(b * tokens + token) * width + h * head_dim + i] as f64;
                let scores: Vec<f64> = (0..keys)
                    .map(|j| (0..head_dim).map(|i| at(&q, queries, t, i) * at(&k, keys, j, i)).sum::<f64>() * scale as f64 + bias.map_or(0.0, |b| b[(h * queries + t) * keys + j] as f64))
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                for i in 0..head_dim {
                    let want = (0..keys).map(|j| weights[j] / sum * at(&v, keys, j, i)).sum::<f64>();
                    let got = got[(b * queries + t) * width + h * head_dim + i] as f64;
                    assert!((got - want).abs() < 1e-5, "batch {b} query {t} head {h}: {got} vs {want}");
                }
            }
        }
    }
}
