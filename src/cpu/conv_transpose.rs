//! The 2×2, stride-2 transposed convolution that doubles a feature map's side (SAM's mask
//! upscaling): no two input pixels reach the same output pixel, so it is one matrix product,
//! `[c_out·4, c_in] · [c_in, H·W]`, whose rows are then laid out as the output's 2×2 blocks.
//! Burn's CPU backend runs it as a general transposed convolution, ~2× the time.

use super::matmul::{matmul_onto_bias, Activation, Bias, Operand};

/// `activation(conv_transpose(x) + bias)` for `x` of shape `[batch, c_in, h, w]` and `weights`
/// `[c_in, c_out, 2, 2]` (PyTorch's layout); returns `[batch, c_out, 2h, 2w]`.
pub fn conv_transpose_2x2(x: &[f32], shape: [usize; 4], weights: &[f32], bias: Option<&[f32]>, activation: Activation) -> Vec<f32> {
    let [batch, c_in, h, w] = shape;
    let rows = weights.len() / c_in.max(1);
    let c_out = rows / 4;
    assert_eq!(weights.len(), c_in * c_out * 4, "2×2 weights per channel pair");
    assert_eq!(x.len(), batch * c_in * h * w, "input shape");
    assert!(bias.is_none_or(|b| b.len() == c_out), "one bias per output channel");
    // Row (co, dy, dx) of the product holds output pixel (2y+dy, 2x+dx) of channel co for
    // every input pixel (y, x): the weights transposed to `[c_out·4, c_in]`.
    let lhs: Vec<f32> = (0..rows).flat_map(|row| (0..c_in).map(move |ci| weights[ci * rows + row])).collect();
    let row_bias: Option<Vec<f32>> = bias.map(|b| b.iter().flat_map(|&v| [v; 4]).collect());
    let mut out = Vec::with_capacity(batch * rows * h * w);
    for image in x.chunks(c_in * h * w).take(batch) {
        let product = matmul_onto_bias(
            Operand { values: &lhs, rows, columns: c_in },
            Operand { values: image, rows: c_in, columns: h * w },
            row_bias.as_deref().map(Bias::PerRow),
            activation,
        );
        // Output row 2y+dy of channel co interleaves products (co, dy, 0) and (co, dy, 1).
        for co in 0..c_out {
            for y in 0..h {
                for dy in 0..2 {
                    let even = &product[((co * 4 + dy * 2) * h + y) * w..][..w];
                    let odd = &product[((co * 4 + dy * 2 + 1) * h + y) * w..][..w];
                    out.extend(even.iter().zip(odd).flat_map(|(&a, &b)| [a, b]));
                }
            }
        }
    }
    out
}
