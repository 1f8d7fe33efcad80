//! `lhs · rhs + bias`, then an activation, computed by `gemm` in output tiles sized for a core's
//! cache: each tile is filled with its bias, multiplied into and activated while it is still
//! there, and the threads take whole tiles. Unfused, the product, the bias and the GELU were
//! each a pass over the whole output in memory; in TinyViT's first stage (256 channels at
//! 256×256) the GELU passes alone took as long as the products before them.

use std::mem::MaybeUninit;

use burn::tensor::Tensor;

use super::{fill_uninit, run_tasks, SharedOutput};
use super::gelu::{gelu, gelu_on_this_thread};

/// A row-major matrix.
pub struct Operand<'a> {
    pub values: &'a [f32],
    pub rows: usize,
    pub columns: usize,
}

/// A bias added to every row (one value per column) or to every column (one per row).
pub enum Bias<'a> {
    PerColumn(&'a [f32]),
    PerRow(&'a [f32]),
}

/// What is applied to each output value after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Gelu,
}

impl Activation {
    /// The activation over a whole tensor, where a layer could not apply it itself.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Identity => x,
            Self::Gelu => gelu(x),
        }
    }
}

/// Output values per tile: 512 KiB, which stays in a core's L2 cache between the product and
/// the activation.
const TILE_VALUES: usize = 1 << 17;
/// Rows per tile: enough that packing the right-hand side once per tile costs little.
const TILE_ROWS: usize = 256;
/// Below this many multiply-adds one tile on one thread (as Burn's CPU matmul does).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `activation(lhs · rhs + bias)`, row-major, written straight into the returned buffer.
pub fn matmul_onto_bias(lhs: Operand, rhs: Operand, bias: Option<Bias>, activation: Activation) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.columns, rhs.columns);
    assert_eq!(k, rhs.rows, "inner dimensions");
    assert!(lhs.values.len() >= m * k && rhs.values.len() >= k * n, "operands shorter than their shapes");
    match &bias {
        Some(Bias::PerColumn(b)) => assert_eq!(b.len(), n, "bias length"),
        Some(Bias::PerRow(b)) => assert_eq!(b.len(), m, "bias length"),
        None => {}
    }
    // Without a zero-fill: each tile's thread writes its values first (the bias, or the product).
    let mut out = Vec::with_capacity(m * n);
    let (tile_rows, tile_columns) = if m * n * k < PARALLEL_WORK {
        (m.max(1), n.max(1))
    } else {
        let rows = m.clamp(1, TILE_ROWS);
        (rows, n.min((TILE_VALUES / rows).next_multiple_of(16)).max(1))
    };
    let tiles_down = m.div_ceil(tile_rows);
    let tiles = tiles_down * n.div_ceil(tile_columns);
    let target = SharedOutput(out.as_mut_ptr());
    let tile = |index: usize| {
        let (row, column) = ((index % tiles_down) * tile_rows, (index / tiles_down) * tile_columns);
        let (rows, columns) = (tile_rows.min(m - row), tile_columns.min(n - column));
        // SAFETY: tiles are disjoint blocks of `out`, which holds m×n values; each index is
        // handed to one call only.
        unsafe { compute_tile(&lhs, &rhs, &bias, activation, target, [row, column], [rows, columns]) };
    };
    run_tasks(tiles, || (), |_, index| tile(index));
    // SAFETY: the tiles cover the m×n values, and each tile wrote all of its own.
    unsafe { out.set_len(m * n) };
    out
}

/// One tile of [`matmul_onto_bias`]: rows `start[0]..+size[0]`, columns `start[1]..+size[1]`.
///
/// # Safety
/// The tile lies inside the m×n output behind `out`, and no other thread touches it meanwhile.
unsafe fn compute_tile(lhs: &Operand, rhs: &Operand, bias: &Option<Bias>, activation: Activation, out: SharedOutput, start: [usize; 2], size: [usize; 2]) {
    let (k, n) = (lhs.columns, rhs.columns);
    let ([row, column], [rows, columns]) = (start, size);
    let row_start = |r: usize| unsafe { out.at((row + r) * n + column) };
    // The tile's first writes: its bias, or zeros where `gemm` would have no product to write.
    let product_reads_tile = bias.is_some() || k == 0;
    for r in 0..rows {
        // SAFETY: each row of the tile is `columns` values inside the output.
        unsafe {
            match bias {
                Some(Bias::PerColumn(b)) => std::ptr::copy_nonoverlapping(b[column..].as_ptr(), row_start(r), columns),
                Some(Bias::PerRow(b)) => {
                    fill_uninit(std::slice::from_raw_parts_mut(row_start(r).cast::<MaybeUninit<f32>>(), columns), b[row + r]);
                }
                None if k == 0 => std::ptr::write_bytes(row_start(r), 0, columns),
                None => {}
            }
        }
    }
    // SAFETY: the operands hold m×k and k×n values (asserted by the caller); the strides
    // describe them and the tile row-major.
    unsafe {
        gemm::gemm(
            rows, columns, k,
            out.at(row * n + column), 1, n as isize, product_reads_tile,
            lhs.values.as_ptr().add(row * k), 1, k as isize,
            rhs.values.as_ptr().add(column), 1, n as isize,
            1.0, 1.0, false, false, false,
            gemm::Parallelism::None,
        );
    }
    if activation == Activation::Gelu {
        // SAFETY: the tile's rows are initialised now and no other thread touches them.
        (0..rows).for_each(|r| gelu_on_this_thread(unsafe { std::slice::from_raw_parts_mut(row_start(r), columns) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product large enough to be tiled, with partial tiles at the bottom and the right,
    /// against a plain f64 product: for both kinds of bias and with GELU. A tile placed at the
    /// wrong offset, a bias read for the wrong row or an edge tile left out fails it.
    #[test]
    fn tiled_products_equal_the_plain_product() {
        let (m, k, n) = (300, 70, 700);
        assert!(m * n * k >= PARALLEL_WORK && m > TILE_ROWS && n > TILE_VALUES / TILE_ROWS, "the shape spans several tiles");
        let value = |i: usize, scale: f32| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * scale;
        let lhs: Vec<f32> = (0..m * k).map(|i| value(i, 1.0)).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| value(i + 13, 0.3)).collect();
        let (per_column, per_row): (Vec<f32>, Vec<f32>) = ((0..n).map(|i| value(i, 2.0)).collect(), (0..m).map(|i| value(i + 5, 2.0)).collect());
        for (bias, activation) in [(Some(Bias::PerColumn(&per_column)), Activation::Gelu), (Some(Bias::PerRow(&per_row)), Activation::Identity), (None, Activation::Identity)] {
            let bias_at = |i: usize, j: usize| match &bias {
                Some(Bias::PerColumn(b)) => b[j] as f64,
                Some(Bias::PerRow(b)) => b[i] as f64,
                None => 0.0,
            };
            let mut want: Vec<f32> = (0..m * n)
                .map(|index| {
                    let (i, j) = (index / n, index % n);
                    ((0..k).map(|p| lhs[i * k + p] as f64 * rhs[p * n + j] as f64).sum::<f64>() + bias_at(i, j)) as f32
                })
                .collect();
            if activation == Activation::Gelu {
                gelu_on_this_thread(&mut want);
            }
            let got = matmul_onto_bias(Operand { values: &lhs, rows: m, columns: k }, Operand { values: &rhs, rows: k, columns: n }, bias, activation);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{activation:?}: max relative difference {worst}");
        }
    }

    /// Empty products (a prompt with no points gives a layer no rows) are empty, and an empty
    /// inner dimension leaves the bias.
    #[test]
    fn empty_products() {
        fn operand(values: &[f32], rows: usize, columns: usize) -> Operand<'_> {
            Operand { values, rows, columns }
        }
        let none: [f32; 0] = [];
        assert!(matmul_onto_bias(operand(&none, 0, 4), operand(&[1.0; 8], 4, 2), Some(Bias::PerColumn(&[1.0, 2.0])), Activation::Gelu).is_empty());
        assert!(matmul_onto_bias(operand(&[1.0; 8], 2, 4), operand(&none, 4, 0), None, Activation::Identity).is_empty());
        let bias_only = matmul_onto_bias(operand(&none, 2, 0), operand(&none, 0, 3), Some(Bias::PerRow(&[5.0, 6.0])), Activation::Identity);
        assert_eq!(bias_only, [5.0, 5.0, 5.0, 6.0, 6.0, 6.0]);
    }
}
