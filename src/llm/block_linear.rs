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
        let input = QuantizedInput::new(x);
        let mut y = vec![0.0; self.rows];
        let per_row = self.cols / BLOCK;
        let row_dot = row_dot();
        let rows = |first: usize, out: &mut [f32]| {
            for (i, out) in out.iter_mut().enumerate() {
                let blocks = (first + i) * per_row..(first + i + 1) * per_row;
                *out = row_dot(&self.levels[blocks.start * 16..blocks.end * 16], &self.scales[blocks.clone()], &self.mins[blocks], &input);
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

/// The input of a product, quantised per block of 32 to 8 bits as llama.cpp's `Q8_0` does
/// (`x ≈ dx·xq`, `|xq| ≤ 127`), so that a block's `Σ q_j x_j` is a sum of small integer
/// products; the block sums `Σ x_j` (for the minimums' term) stay exact.
struct QuantizedInput {
    values: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl QuantizedInput {
    fn new(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK;
        let mut input = Self { values: Vec::with_capacity(x.len()), scales: Vec::with_capacity(blocks), sums: Vec::with_capacity(blocks) };
        for block in x.chunks_exact(BLOCK) {
            let largest = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = largest / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            input.values.extend(block.iter().map(|v| (v * inverse).round() as i8));
            input.scales.push(scale);
            input.sums.push(block.iter().sum());
        }
        input
    }
}

/// One row's dot product: levels, scales, minimums, the quantised input.
type RowDot = fn(&[u8], &[f32], &[f32], &QuantizedInput) -> f32;

/// The row kernel for the widest vector unit this CPU has (chosen once per product, not per
/// row). Both compute the same integer sums per lane and the same float operations in the same
/// order, so every CPU and the browser decode the same tokens.
fn row_dot() -> RowDot {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the features the function is compiled for were just detected.
        return |levels, scales, mins, input| unsafe { row_dot_avx2(levels, scales, mins, input) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        row_dot_simd128
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        row_dot_lanes
    }
}

/// Portable: eight lanes per block, lane `l` holding the integer sum of the four products of
/// values `4l..4l+4` (levels of the low nibbles for `l < 4`, of the high ones after), then
/// scaled into a float lane — the grouping `maddubs` + `madd` gives on x86. Two lane sets for
/// alternate blocks, so a block's additions do not wait for the previous one's.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))] // the reference the wasm kernel follows
fn row_dot_lanes(levels: &[u8], scales: &[f32], mins: &[f32], input: &QuantizedInput) -> f32 {
    let (mut even, mut odd) = ([0.0f32; 8], [0.0f32; 8]);
    for (b, (q, x)) in levels.chunks_exact(16).zip(input.values.chunks_exact(BLOCK)).enumerate() {
        let q: &[u8; 16] = q.try_into().expect("16 level bytes");
        let x: &[i8; BLOCK] = x.try_into().expect("32 values");
        let mut sums = [0i32; 8];
        for j in 0..16 {
            sums[j / 4] += i32::from(q[j] & 0x0f) * i32::from(x[j]);
            sums[4 + j / 4] += i32::from(q[j] >> 4) * i32::from(x[16 + j]);
        }
        let scale = scales[b] * input.scales[b];
        let lanes = if b % 2 == 0 { &mut even } else { &mut odd };
        for (lane, sum) in lanes.iter_mut().zip(sums) {
            *lane += sum as f32 * scale;
        }
    }
    finish_row(even, odd, mins, &input.sums)
}

/// `Σ_lanes + Σ_blocks m·Σx`, in one fixed order for every kernel.
#[inline(always)]
fn finish_row(even: [f32; 8], odd: [f32; 8], mins: &[f32], sums: &[f32]) -> f32 {
    let mut offsets = [0.0f32; 8];
    for (m, s) in mins.chunks(8).zip(sums.chunks(8)) {
        for (i, (m, s)) in m.iter().zip(s).enumerate() {
            offsets[i] += m * s;
        }
    }
    even.iter().chain(&odd).sum::<f32>() + offsets.iter().sum::<f32>()
}

/// AVX2: a block's 32 products in one `maddubs` (unsigned levels × signed inputs, adjacent
/// pairs added into 16 bits: at most 2·15·127, no saturation) and one `madd` (pairs into 32-bit
/// lanes); then the lanes as [`row_dot_lanes`] scales them (multiply, then add: no FMA, so the
/// rounding is the portable kernel's).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_dot_avx2(levels: &[u8], scales: &[f32], mins: &[f32], input: &QuantizedInput) -> f32 {
    use std::arch::x86_64::*;
    let blocks = scales.len();
    assert!(levels.len() == blocks * 16 && input.values.len() == blocks * BLOCK && input.scales.len() == blocks);
    let nibble = _mm_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for b in 0..blocks {
        // SAFETY: the block's 16 level bytes and 32 input bytes are in bounds (asserted above).
        let packed = _mm_loadu_si128(levels.as_ptr().add(16 * b).cast());
        let low = _mm_and_si128(packed, nibble);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
        let q = _mm256_set_m128i(high, low);
        let x = _mm256_loadu_si256(input.values.as_ptr().add(BLOCK * b).cast());
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
        let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(scales[b] * input.scales[b]));
        if b % 2 == 0 {
            even = _mm256_add_ps(even, scaled);
        } else {
            odd = _mm256_add_ps(odd, scaled);
        }
    }
    let (mut even_lanes, mut odd_lanes) = ([0.0f32; 8], [0.0f32; 8]);
    _mm256_storeu_ps(even_lanes.as_mut_ptr(), even);
    _mm256_storeu_ps(odd_lanes.as_mut_ptr(), odd);
    finish_row(even_lanes, odd_lanes, mins, &input.sums)
}

/// WebAssembly SIMD: `dot_i16x8` adds adjacent products into 32 bits, a shuffle-add then gives
/// the four-value sums of [`row_dot_lanes`]; the scaling is the same multiply-then-add.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn row_dot_simd128(levels: &[u8], scales: &[f32], mins: &[f32], input: &QuantizedInput) -> f32 {
    use std::arch::wasm32::*;
    let blocks = scales.len();
    assert!(levels.len() == blocks * 16 && input.values.len() == blocks * BLOCK && input.scales.len() == blocks);
    let nibble = u8x16_splat(0x0f);
    // Sums of products 4l..4l+4 from two vectors of pair sums.
    let quads = |a: v128, b: v128| i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(a, b), i32x4_shuffle::<1, 3, 5, 7>(a, b));
    let (mut even, mut odd) = ([f32x4_splat(0.0); 2], [f32x4_splat(0.0); 2]);
    for b in 0..blocks {
        // SAFETY: the block's 16 level bytes and 32 input bytes are in bounds (asserted above).
        let (packed, x_low, x_high) = unsafe {
            (
                v128_load(levels.as_ptr().add(16 * b).cast()),
                v128_load(input.values.as_ptr().add(BLOCK * b).cast()),
                v128_load(input.values.as_ptr().add(BLOCK * b + 16).cast()),
            )
        };
        let (low, high) = (v128_and(packed, nibble), u8x16_shr(packed, 4));
        let sums_of = |q: v128, x: v128| {
            let first = i32x4_dot_i16x8(u16x8_extend_low_u8x16(q), i16x8_extend_low_i8x16(x));
            let second = i32x4_dot_i16x8(u16x8_extend_high_u8x16(q), i16x8_extend_high_i8x16(x));
            quads(first, second)
        };
        let scale = f32x4_splat(scales[b] * input.scales[b]);
        let lanes = if b % 2 == 0 { &mut even } else { &mut odd };
        lanes[0] = f32x4_add(lanes[0], f32x4_mul(f32x4_convert_i32x4(sums_of(low, x_low)), scale));
        lanes[1] = f32x4_add(lanes[1], f32x4_mul(f32x4_convert_i32x4(sums_of(high, x_high)), scale));
    }
    let unpack = |v: [v128; 2]| {
        let mut out = [0.0f32; 8];
        // SAFETY: two 16-byte stores into the 32 bytes of `out`.
        unsafe {
            v128_store(out.as_mut_ptr().cast(), v[0]);
            v128_store(out.as_mut_ptr().add(4).cast(), v[1]);
        }
        out
    };
    finish_row(unpack(even), unpack(odd), mins, &input.sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::gguf::{dequantize, quantize};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 - 0.5) * if i % 7 == 0 { 4.0 } else { 1.0 }).collect()
    }

    /// The product from blocks is the exact product of the blocks with the 8-bit input (to f32
    /// rounding), and differs from the f32 product with the matrix the blocks expand to (Burn's
    /// path) by no more than the input's rounding allows, for both block types.
    #[test]
    fn the_block_product_is_the_product_with_the_quantised_input() {
        let (rows, cols) = (70, 96);
        let x = values(cols, 1);
        let input = QuantizedInput::new(&x);
        for kind in [TensorType::Q4_0, TensorType::Q4_1] {
            let raw = quantize(kind, &values(rows * cols, 2));
            let expanded = dequantize(kind, &raw);
            let matrix = BlockLinear::from_blocks(kind, rows, &raw).unwrap().unwrap();
            assert_eq!(matrix.shape(), [rows, cols]);
            let y = matrix.forward(&x);
            // Stacked with itself: the same rows twice.
            let twice = BlockLinear::stack_rows(vec![matrix.clone(), matrix.clone()]);
            assert_eq!(twice.forward(&x), [y.clone(), y.clone()].concat());
            for (r, &got) in y.iter().enumerate() {
                let row = &expanded[r * cols..(r + 1) * cols];
                // Σ (w − m)·dx·xq + m·Σx per block, in f64.
                let exact: f64 = (0..cols / BLOCK)
                    .map(|b| {
                        let m = f64::from(matrix.mins[r * cols / BLOCK + b]);
                        let span = b * BLOCK..(b + 1) * BLOCK;
                        let levels: f64 = span.clone().map(|j| (f64::from(row[j]) - m) * f64::from(input.values[j])).sum();
                        levels * f64::from(input.scales[b]) + m * f64::from(input.sums[b])
                    })
                    .sum();
                assert!((f64::from(got) - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{kind:?} row {r}: {got} vs {exact}");
                // Rounding each input to its block's step moves it by at most half a step.
                let f32_product: f64 = row.iter().zip(&x).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
                let bound: f64 = (0..cols)
                    .map(|j| (f64::from(row[j]) - f64::from(matrix.mins[r * cols / BLOCK + j / BLOCK])).abs() * f64::from(input.scales[j / BLOCK]) / 2.0)
                    .sum();
                assert!((f64::from(got) - f32_product).abs() <= bound + 1e-4, "{kind:?} row {r}: {got} vs f32 {f32_product} (bound {bound})");
            }
        }
    }

    /// Every kernel gives the same bits (so native CPUs and the browser decode the same text).
    #[test]
    fn the_vector_kernel_equals_the_portable_one_bit_for_bit() {
        let (rows, cols) = (9, 576);
        let input = QuantizedInput::new(&values(cols, 3));
        let matrix = BlockLinear::from_blocks(TensorType::Q4_1, rows, &quantize(TensorType::Q4_1, &values(rows * cols, 4))).unwrap().unwrap();
        let kernel = row_dot();
        let per_row = cols / BLOCK;
        for r in 0..rows {
            let blocks = r * per_row..(r + 1) * per_row;
            let args = (&matrix.levels[blocks.start * 16..blocks.end * 16], &matrix.scales[blocks.clone()], &matrix.mins[blocks]);
            assert_eq!(kernel(args.0, args.1, args.2, &input).to_bits(), row_dot_lanes(args.0, args.1, args.2, &input).to_bits(), "row {r}");
        }
    }

    #[test]
    fn inputs_quantise_to_eight_bits_per_block() {
        let x: Vec<f32> = (0..64).map(|i| if i < 32 { (i as f32 - 16.0) / 4.0 } else { 0.0 }).collect();
        let input = QuantizedInput::new(&x);
        assert_eq!(input.scales, [4.0 / 127.0, 0.0]);
        assert_eq!((input.values[0], input.values[16], input.values[31]), (-127, 0, 119));
        assert!(input.values[32..].iter().all(|&v| v == 0), "an all-zero block stays zero");
        assert_eq!(input.sums, [x[..32].iter().sum::<f32>(), 0.0]);
    }

    #[test]
    fn other_block_types_and_ragged_bytes_are_refused() {
        assert!(BlockLinear::from_blocks(TensorType::Q8_0, 1, &[0; 34]).unwrap().is_none());
        assert!(BlockLinear::from_blocks(TensorType::Q4_1, 2, &[0; 30]).is_err());
        assert!(BlockLinear::from_blocks(TensorType::Q4_1, 0, &[]).is_err());
    }
}
