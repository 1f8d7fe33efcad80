//! One-position steps straight from the shipped 4-bit blocks.
//!
//! Decoding a token multiplies one vector by every weight matrix once, so its time is the time to
//! read the weights: the f32 matrices Burn computes with are 538 MB per token, the ggml 4-bit
//! blocks they were expanded from ~76 MB. For one position on the CPU the model's linear layers
//! therefore read those blocks directly (here, `y = W x` with `W` in blocks); prefill, batches,
//! training and the GPU keep Burn's f32 matmul.
//!
//! Both shipped block types are `value = d·q + m` with a 4-bit level `q` per value (`Q4_1`
//! stores `m`, `Q4_0` is `m = −8d`), so a row's dot product with `x` is, per block of 32,
//! `d·Σ q_j x_j + m·Σ x_j`; the block sums of `x` are computed once per product.

use super::super::weights::gguf::{f16_to_f32, TensorType};
use crate::error::{Error, Result};

/// Values per block.
const BLOCK: usize = 32;

/// A `[rows (outputs), cols (inputs)]` matrix in 4-bit blocks, repacked at load for the product:
/// the f16 scales and minimums widened to f32, the 16 level bytes of each block side by side.
#[derive(Clone)]
pub struct BlockLinear {
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    mins: Vec<f32>,
    /// Byte `j` of a block holds level `j` in its low nibble and level `j + 16` in its high one.
    levels: Vec<u8>,
}

impl std::fmt::Debug for BlockLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockLinear({}×{}, 4-bit)", self.rows, self.cols)
    }
}

impl BlockLinear {
    /// Repacks `rows` rows of raw `Q4_0`/`Q4_1` blocks (ggml's layout, blocks along the inputs);
    /// `None` for other block types, which keep Burn's f32 path.
    pub fn from_blocks(kind: TensorType, rows: usize, raw: &[u8]) -> Result<Option<Self>> {
        let bytes_per_block = match kind {
            TensorType::Q4_0 => 18,
            TensorType::Q4_1 => 20,
            _ => return Ok(None),
        };
        if rows == 0 || raw.len() % (rows * bytes_per_block) != 0 {
            return Err(Error::Other(format!("{} bytes are not {rows} rows of whole {} blocks", raw.len(), kind.name())));
        }
        let blocks = raw.len() / bytes_per_block;
        let mut matrix = Self { rows, cols: blocks / rows * BLOCK, scales: Vec::with_capacity(blocks), mins: Vec::with_capacity(blocks), levels: Vec::with_capacity(blocks * 16) };
        for block in raw.chunks_exact(bytes_per_block) {
            let half = |at: usize| f16_to_f32(u16::from_le_bytes([block[at], block[at + 1]]));
            let d = half(0);
            let (m, levels) = match kind {
                TensorType::Q4_1 => (half(2), &block[4..]),
                _ => (-8.0 * d, &block[2..]),
            };
            matrix.scales.push(d);
            matrix.mins.push(m);
            matrix.levels.extend_from_slice(levels);
        }
        Ok(Some(matrix))
    }

    /// One matrix whose rows are those of `parts` in order (all with the same inputs): one
    /// product instead of several where they read the same vector.
    pub fn stack_rows(parts: Vec<BlockLinear>) -> Self {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols), "stacked matrices read the same inputs");
        let mut stacked = Self { rows: 0, cols, scales: Vec::new(), mins: Vec::new(), levels: Vec::new() };
        for part in parts {
            stacked.rows += part.rows;
            stacked.scales.extend(part.scales);
            stacked.mins.extend(part.mins);
            stacked.levels.extend(part.levels);
        }
        stacked
    }

    /// Outputs and inputs.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// `W x` for one input vector of `cols` values.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.cols, "input width");
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        let mut y = vec![0.0; self.rows];
        let per_row = self.cols / BLOCK;
        let row_dot = row_dot();
        let rows = |first: usize, out: &mut [f32]| {
            for (i, out) in out.iter_mut().enumerate() {
                let blocks = (first + i) * per_row..(first + i + 1) * per_row;
                *out = row_dot(&self.levels[blocks.start * 16..blocks.end * 16], &self.scales[blocks.clone()], &self.mins[blocks], x, &sums);
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            // Chunks big enough that a thread's share outweighs handing it over.
            const ROWS_PER_TASK: usize = 64;
            y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(chunk, out)| rows(chunk * ROWS_PER_TASK, out));
        }
        #[cfg(target_arch = "wasm32")]
        rows(0, &mut y);
        y
    }
}

/// One row's dot product: levels, scales, minimums, input, the input's block sums.
type RowDot = fn(&[u8], &[f32], &[f32], &[f32], &[f32]) -> f32;

/// The row kernel for the widest vector unit this CPU has (chosen once per product, not per row).
fn row_dot() -> RowDot {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        return |levels, scales, mins, x, sums| unsafe { row_dot_avx2(levels, scales, mins, x, sums) };
    }
    row_dot_lanes
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_avx2(levels: &[u8], scales: &[f32], mins: &[f32], x: &[f32], sums: &[f32]) -> f32 {
    row_dot_lanes(levels, scales, mins, x, sums)
}

/// Written as independent lanes so that the compiler vectorises it (a single running sum would
/// fix the order of the additions and keep it scalar): 16 lanes across a block, and a set of them
/// for even and one for odd blocks, so that a block's additions do not wait for the previous
/// one's (measured: 20 → 17 ms per token; a loop over the sets instead of two named ones stopped
/// the vectorisation).
#[inline(always)]
fn row_dot_lanes(levels: &[u8], scales: &[f32], mins: &[f32], x: &[f32], sums: &[f32]) -> f32 {
    let (mut even, mut odd) = ([0.0f32; 16], [0.0f32; 16]);
    let pairs = levels.chunks_exact(32).zip(x.chunks_exact(2 * BLOCK)).zip(scales.chunks_exact(2));
    for ((q, x), d) in pairs {
        add_block(&mut even, &q[..16], &x[..BLOCK], d[0]);
        add_block(&mut odd, &q[16..], &x[BLOCK..], d[1]);
    }
    if scales.len() % 2 == 1 {
        let b = scales.len() - 1;
        add_block(&mut even, &levels[16 * b..], &x[BLOCK * b..], scales[b]);
    }
    let mut offsets = [0.0f32; 8];
    for (m, s) in mins.chunks(8).zip(sums.chunks(8)) {
        for (i, (m, s)) in m.iter().zip(s).enumerate() {
            offsets[i] += m * s;
        }
    }
    even.iter().chain(&odd).sum::<f32>() + offsets.iter().sum::<f32>()
}

/// One block's `d·Σ q_j x_j` into the lanes.
#[inline(always)]
fn add_block(lanes: &mut [f32; 16], q: &[u8], x: &[f32], d: f32) {
    let q: &[u8; 16] = q.try_into().expect("16 level bytes");
    let (low, high) = x.split_at(16);
    let (low, high): (&[f32; 16], &[f32; 16]) = (low.try_into().expect("16 values"), high.try_into().expect("16 values"));
    for j in 0..16 {
        lanes[j] += d * (f32::from(q[j] & 0x0f) * low[j] + f32::from(q[j] >> 4) * high[j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::gguf::{dequantize, quantize};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 - 0.5) * if i % 7 == 0 { 4.0 } else { 1.0 }).collect()
    }

    /// The product from blocks equals the product with the matrix the blocks expand to (the f32
    /// path Burn runs), for both block types, to f32 rounding.
    #[test]
    fn the_block_product_equals_the_expanded_matrix_product() {
        let (rows, cols) = (70, 96);
        let x = values(cols, 1);
        for kind in [TensorType::Q4_0, TensorType::Q4_1] {
            let raw = quantize(kind, &values(rows * cols, 2));
            let expanded = dequantize(kind, &raw);
            let matrix = BlockLinear::from_blocks(kind, rows, &raw).unwrap().unwrap();
            assert_eq!(matrix.shape(), [rows, cols]);
            let y = matrix.forward(&x);
            // Stacked with itself: the same rows twice.
            let twice = BlockLinear::stack_rows(vec![matrix.clone(), matrix]);
            assert_eq!(twice.forward(&x), [y.clone(), y.clone()].concat());
            for (r, &got) in y.iter().enumerate() {
                let expected: f64 = expanded[r * cols..(r + 1) * cols].iter().zip(&x).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
                assert!((f64::from(got) - expected).abs() < 1e-4 * (1.0 + expected.abs()), "{kind:?} row {r}: {got} vs {expected}");
            }
        }
    }

    #[test]
    fn other_block_types_and_ragged_bytes_are_refused() {
        assert!(BlockLinear::from_blocks(TensorType::Q8_0, 1, &[0; 34]).unwrap().is_none());
        assert!(BlockLinear::from_blocks(TensorType::Q4_1, 2, &[0; 30]).is_err());
        assert!(BlockLinear::from_blocks(TensorType::Q4_1, 0, &[]).is_err());
    }
}
