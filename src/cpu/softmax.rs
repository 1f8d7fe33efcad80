//! Softmax over the rows of a score matrix, with an exponential the compiler vectorises: the
//! window attention's softmax called the C library's scalar `expf` per score, ~10 % of the image
//! encoder's time.

widest_vectors! {
    /// `row ← exp(row − max(row)) / Σ` for each row of `width` values.
    pub fn softmax_rows(scores: &mut [f32], width: usize) = softmax_rows_portable
}

#[inline(always)]
fn softmax_rows_portable(scores: &mut [f32], width: usize) {
    for row in scores.chunks_mut(width) {
        let max = across_lanes(row, f32::NEG_INFINITY, |m, s| if s > m { s } else { m });
        row.iter_mut().for_each(|s| *s -= max);
    }
    // One loop over every row at once: rows narrower than a vector (the decoder's 7 tokens)
    // vectorise too.
    scores.iter_mut().for_each(|s| *s = exp_at_most_zero(*s));
    for row in scores.chunks_mut(width) {
        let scale = 1.0 / across_lanes(row, 0.0, |sum, s| sum + s);
        row.iter_mut().for_each(|s| *s *= scale);
    }
}

/// Folds `values` into 16 running lanes and then the lanes into one. A single running value
/// is a chain the compiler must keep in order (float addition is not associative), so it
/// would not vectorise; with lanes the order is fixed by this code, the same at every width.
#[inline(always)]
fn across_lanes(values: &[f32], start: f32, fold: impl Fn(f32, f32) -> f32) -> f32 {
    const LANES: usize = 16;
    if values.len() < LANES {
        return values.iter().fold(start, |acc, &value| fold(acc, value));
    }
    let mut lanes = [start; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = fold(*lane, value);
        }
    }
    let lanes = lanes.iter().fold(start, |acc, &lane| fold(acc, lane));
    rest.iter().fold(lanes, |acc, &value| fold(acc, value))
}

/// `exp(x)` for `x ≤ 0` (a score less the row's maximum), within 2 ulp: `2ⁿ·p(r)` with
/// `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, and Cephes' degree-6 polynomial for `p`. Branch-free.
/// Below −87 it returns a value under 2⁻¹²⁵ instead of the exact tiny one, which a softmax
/// cannot tell from it next to the row's maximum, exp(0) = 1.
#[inline(always)]
fn exp_at_most_zero(x: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer n held in the low mantissa bits (the vector unit's
    // rounding, no float-to-int conversion); taking it away again gives n as a float.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let p = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5]
        .iter()
        .fold(0.0, |acc, &c| acc * r + c);
    let p = p * r * r + r + 1.0;
    // 2ⁿ from its exponent bits; n ≥ −126 keeps it a normal number.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(n_bits.wrapping_add(127) << 23) * p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exponential against f64's over the range scores take, and softmax rows against
    /// the f64 formula, with a large spread and a row of equal values.
    #[test]
    fn softmax_matches_the_f64_formula() {
        for i in 0..=200_000 {
            let x = -(i as f32) * 4.35e-4;
            let want = (x as f64).exp();
            let got = exp_at_most_zero(x) as f64;
            assert!((got - want).abs() <= 2.5 * f32::EPSILON as f64 * want, "exp({x}) = {got}, want {want}");
        }
        for far_below in [-87.5, -100.0, -1e30, f32::NEG_INFINITY] {
            let got = exp_at_most_zero(far_below);
            assert!((0.0..1e-37).contains(&got), "exp({far_below}) = {got}");
        }
        let rows: Vec<f32> = (0..3 * 50).map(|i| if i < 100 { ((i * 37 % 101) as f32 - 50.0) * 0.7 } else { 1.5 }).collect();
        let mut got = rows.clone();
        softmax_rows(&mut got, 50);
        for (row, got) in rows.chunks(50).zip(got.chunks(50)) {
            // The differences as f32 computes them: their rounding is the input's, not the kernel's.
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let exps: Vec<f64> = row.iter().map(|&s| ((s - max) as f64).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for (&e, &g) in exps.iter().zip(got) {
                let want = e / sum;
                assert!((g as f64 - want).abs() <= 1e-6 * want + 1e-30, "softmax {g} vs {want}");
            }
        }
    }
}
