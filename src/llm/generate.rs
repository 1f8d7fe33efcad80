//! Token-by-token generation with a KV cache: greedy or temperature + top-p sampling (seeded),
//! stop tokens, a token limit, and a per-token callback that streams text and can cancel.
//! Logits are read back asynchronously and sampled on the host, so the loop also runs on wasm.

use burn::tensor::{Int, Tensor, TensorData};

use super::llama::{KvCache, Llama};
use crate::error::{Error, Result};
use crate::rng::SplitMix64 as Rng;
use crate::segment::read_f32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax at `temperature`, keep the most likely tokens up to `top_p` probability mass.
    TopP { temperature: f32, top_p: f32, seed: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends (without emitting it) at any of these tokens.
    pub stop_tokens: Vec<u32>,
    /// n: no n-gram of generated tokens is generated twice (0: any may be). A small greedy model
    /// can fall into a loop ("…in the temporal lobe, in the temporal lobe, …"); the prompt is not
    /// counted, so facts can still be copied from it.
    pub no_repeat_ngram: usize,
}

/// The tokens that would complete an n-gram already among `tokens`: those that followed an
/// earlier occurrence of the last n − 1 tokens.
fn repeating_tokens(tokens: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || tokens.len() < n {
        return Vec::new();
    }
    let prefix = &tokens[tokens.len() + 1 - n..];
    tokens.windows(n).filter(|w| &w[..n - 1] == prefix).map(|w| w[n - 1]).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    MaxTokens,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// Picks the next token from `logits` (one row, vocab wide).
fn sample(logits: &[f32], sampling: Sampling, rng: &mut Rng) -> Result<u32> {
    if logits.iter().any(|v| v.is_nan()) {
        return Err(Error::Other("the language model produced NaN logits".into()));
    }
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0);
    match sampling {
        Sampling::Greedy => Ok(argmax()),
        Sampling::TopP { temperature, top_p, .. } => {
            if temperature <= 0.0 {
                return Ok(argmax());
            }
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut probs: Vec<(u32, f64)> =
                logits.iter().enumerate().map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp())).collect();
            probs.sort_by(|a, b| b.1.total_cmp(&a.1));
            let total: f64 = probs.iter().map(|p| p.1).sum();
            let mut kept = 0.0;
            let mut cut = probs.len();
            for (i, p) in probs.iter().enumerate() {
                kept += p.1 / total;
                if kept >= top_p as f64 {
                    cut = i + 1;
                    break;
                }
            }
            let nucleus = &probs[..cut];
            let mass: f64 = nucleus.iter().map(|p| p.1).sum();
            let mut target = rng.next_f64() * mass;
            for (id, p) in nucleus {
                target -= p;
                if target <= 0.0 {
                    return Ok(*id);
                }
            }
            Ok(nucleus[nucleus.len() - 1].0)
        }
    }
}

/// Continues from `next_logits` (the logits after the prompt, whose keys and values are already
/// in `cache`). `on_token` sees each new token and returns false to cancel.
pub async fn generate(
    model: &Llama,
    cache: &mut KvCache,
    next_logits: Tensor<2>,
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generated> {
    let seed = match options.sampling {
        Sampling::TopP { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut rng = Rng::new(seed);
    let mut logits = next_logits;
    let mut tokens = Vec::new();
    loop {
        if tokens.len() >= options.max_tokens {
            return Ok(Generated { tokens, stop: StopReason::MaxTokens });
        }
        let mut row = read_f32(logits).await?;
        for banned in repeating_tokens(&tokens, options.no_repeat_ngram) {
            row[banned as usize] = f32::NEG_INFINITY;
        }
        let token = sample(&row, options.sampling, &mut rng)?;
        if options.stop_tokens.contains(&token) {
            return Ok(Generated { tokens, stop: StopReason::StopToken });
        }
        tokens.push(token);
        if !on_token(token) {
            return Ok(Generated { tokens, stop: StopReason::Cancelled });
        }
        logits = model.next_token_logits(token, cache)?;
    }
}

/// Prefills `prompt` into a fresh cache and generates.
pub async fn generate_from_ids(
    model: &Llama,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generated> {
    if prompt.is_empty() {
        return Err(Error::Prompt("the prompt is empty".into()));
    }
    let device = model.output.weight.device();
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, prompt.len()]), &device);
    let mut cache = KvCache::new();
    let output = model.forward_tokens(input, &mut cache)?;
    generate(model, &mut cache, model.last_logits(output.hidden), options, on_token).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ngram_is_not_generated_twice() {
        // "a b c d a b c" → "d" would repeat "b c d" (n = 3) and "a b c d" (n = 4).
        let tokens = [1, 2, 3, 4, 1, 2, 3];
        assert_eq!(repeating_tokens(&tokens, 3), vec![4]);
        assert_eq!(repeating_tokens(&tokens, 4), vec![4]);
        assert_eq!(repeating_tokens(&tokens, 5), Vec::<u32>::new(), "\"3 1 2 3\" never came before");
        assert_eq!(repeating_tokens(&tokens, 0), Vec::<u32>::new());
        assert_eq!(repeating_tokens(&[5, 5], 2), vec![5]);
    }

    #[test]
    fn greedy_takes_the_argmax_and_nan_is_an_error() {
        let mut rng = Rng::new(1);
        assert_eq!(sample(&[0.1, 3.0, -1.0], Sampling::Greedy, &mut rng).unwrap(), 1);
        assert!(sample(&[0.1, f32::NAN], Sampling::Greedy, &mut rng).is_err());
    }

    #[test]
    fn top_p_stays_in_the_nucleus_and_is_reproducible() {
        // Token 0 holds ~88 % of the mass: with top_p 0.5 only it can be drawn.
        let logits = [4.0, 2.0, 0.0, -2.0];
        let nucleus = Sampling::TopP { temperature: 1.0, top_p: 0.5, seed: 7 };
        let mut rng = Rng::new(7);
        assert!((0..200).all(|_| sample(&logits, nucleus, &mut rng).unwrap() == 0));
        // With the full distribution every token shows up, and a seed replays the same draws.
        let full = Sampling::TopP { temperature: 2.0, top_p: 1.0, seed: 3 };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..400).map(|_| sample(&logits, full, &mut rng).unwrap()).collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert_ne!(a, draw(4));
        assert!((0..4).all(|t| a.contains(&t)));
    }
}
