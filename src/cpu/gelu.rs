//! GELU in its exact (erf) form, as PyTorch's default, over f32 values: a rational erf that the
//! compiler vectorises (max error 4.2e-7). Burn's CPU backend calls a scalar `erff` per value
//! (~13 ns here), and TinyViT's first stage alone, at full resolution, takes ~125 M GELUs per
//! image.

use burn::tensor::Tensor;

use super::on_plain_cpu;

/// GELU over a tensor: on the CPU this module's kernel, split over the threads; on a GPU, under
/// autodiff or for other float types, Burn's own.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !on_plain_cpu(&x) {
        return burn::tensor::activation::gelu(x);
    }
    let device = x.device();
    // In the tensor's own bytes: taking them as a `Vec<f32>` copies them all whenever Burn
    // allocated them with a wider alignment than a vector's, as its matmul outputs are.
    let mut data = x.into_data();
    gelu_in_place(data.as_mut_slice::<f32>().expect("f32 checked above"));
    Tensor::from_data(data, &device)
}

/// `v ← v·(1 + erf(v/√2))/2` for every value, split over the threads.
fn gelu_in_place(values: &mut [f32]) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        // Large enough that a thread's share outweighs handing it over.
        const VALUES_PER_TASK: usize = 1 << 16;
        values.par_chunks_mut(VALUES_PER_TASK).for_each(gelu_on_this_thread);
    }
    #[cfg(target_arch = "wasm32")]
    gelu_on_this_thread(values);
}

widest_vectors! {
    /// [`gelu_in_place`] on the calling thread: for values that are already one thread's share.
    pub fn gelu_on_this_thread(values: &mut [f32]) = gelu_values
}

#[inline(always)]
fn gelu_values(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf as `x·P(x²)/Q(x²)` on [−4, 4] (beyond it erf is ±1 in f32): the rational
/// minimax form Eigen and XNNPACK use. Branch-free, so a loop over it vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [-1.609_603_3e-2, -2.954_599_8e-3, -7.349_906_3e-4, -5.692_506_4e-5, -2.101_024e-6, 2.770_681_4e-8, -2.726_142_3e-10];
    const Q: [f32; 5] = [-1.426_473_9e-2, -7.373_329e-3, -1.682_827e-3, -2.133_740_5e-4, -1.456_607_2e-5];
    // min/max rather than clamp: clamp's NaN rule keeps it from vectorising.
    let clamped = x.min(4.0).max(-4.0);
    let x2 = clamped * clamped;
    let p = P.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
    let q = Q.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
    // Exactly ±1 beyond the range: the rational form ends a few ulp short of it there, and
    // GELU's `1 + erf` would turn that into −x·1e-7 instead of 0 for large negative x.
    if clamped == x { clamped * p / q } else { 1.0f32.copysign(x) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn gelu_on_the_cpu_equals_burns_within_float_error() {
        let device = Device::flex();
        let x = Tensor::<3>::random([3, 70, 333], burn::tensor::Distribution::Normal(0.0, 3.0), &device);
        let ours = gelu(x.clone().permute([2, 0, 1])).permute([1, 2, 0]);
        let burns = burn::tensor::activation::gelu(x);
        assert_eq!(ours.dims(), burns.dims());
        let diff = ((ours - burns.clone()).abs() / (burns.abs() + 1.0)).max().into_scalar::<f32>();
        assert!(diff < 2e-6, "max |Δ|/(1 + |gelu|) = {diff}");
    }

    /// The CPU GELU against the erf form in f64, over the range activations take and beyond (the
    /// bound is f32's: near −5, `1 + erf` cancels to a few units in the last place of 1).
    #[test]
    fn gelu_matches_the_erf_form() {
        let xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 5e-5).chain([-40.0, -6.0, 6.0, 40.0, 0.0]).collect();
        let mut fast = xs.clone();
        gelu_in_place(&mut fast);
        for (&x, &g) in xs.iter().zip(&fast) {
            let want = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2));
            assert!((g as f64 - want).abs() < 2e-6 * (1.0 + want.abs()), "gelu({x}) = {g}, want {want}");
        }
    }

    /// Each value is computed alone, without fused multiply-adds, so the widest vectors give
    /// the portable loop's bits.
    #[test]
    fn the_vector_kernel_gives_the_portable_bits() {
        let xs: Vec<f32> = (-70_000..=70_000).map(|i| i as f32 * 1.3e-4).collect();
        let (mut portable, mut widest) = (xs.clone(), xs);
        gelu_values(&mut portable);
        gelu_on_this_thread(&mut widest);
        assert!(widest.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// erf in f64 from its Taylor series (|x| < 3) and continued fraction (beyond), as a reference
    /// independent of the kernel.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            let mut fraction = 0.0;
            for k in (1..=60).rev() {
                fraction = (k as f64 / 2.0) / (a + fraction);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + fraction)
        };
        value.copysign(x)
    }
}
