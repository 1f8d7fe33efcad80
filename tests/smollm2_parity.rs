//! SmolLM2 parity with reference code on the same GGUF (fixtures from
//! tests/fixtures/make_smollm2.py): the GGUF reader against the `gguf` package's dequantiser,
//! the tokenizer against `transformers`, and the Burn model's logits and greedy continuations
//! against `transformers` running the dequantised weights in f32.

mod common;

use std::sync::OnceLock;

use burn::tensor::{Device, Int, Tensor, TensorData};
use futures_lite::future::block_on;
use medsee::llm::chat::{chat_ids, Message, Role};
use medsee::llm::generate::{generate_from_ids, GenerateOptions, Sampling, StopReason};
use medsee::llm::llama::{KvCache, Llama};
use medsee::llm::tokenizer::TextTokenizer;
use medsee::segment::read_f32;
use medsee::weights::convert::read_source;
use medsee::weights::store::SMOLLM2_TOKENIZER;
use medsee::weights::gguf::Gguf;
use medsee::llm::TextModel;
use medsee::weights::{manifest, Variant};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = common::repo().join("tests/fixtures/smollm2").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn gguf_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| read_source(&common::model_paths(), manifest::source(manifest::SMOLLM2)).expect("fetched GGUF"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load_llm(variant: Variant) -> Llama {
    let text_model = TextModel::load(&common::model_paths().converted, variant, &Device::flex()).unwrap();
    let from_gguf = medsee::llm::llama::LlamaConfig::from_gguf(&Gguf::parse(gguf_bytes()).unwrap()).unwrap();
    assert_eq!(text_model.config, from_gguf, "converted config differs from the GGUF's");
    text_model.model
}

fn next_logits(model: &Llama, prompt: &[u32]) -> Vec<f32> {
    let input = Tensor::<2, Int>::from_data(TensorData::new(prompt.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, prompt.len()]), &Device::flex());
    let output = model.forward_tokens(input, &mut KvCache::new()).unwrap();
    block_on(read_f32(model.last_logits(output.hidden))).unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    v.iter().map(|&x| x as f64 - lse).collect()
}

#[test]
fn gguf_reader_matches_the_reference_dequantiser() {
    let g = Gguf::parse(gguf_bytes()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 272);
    let samples = fixture("gguf_tensors.json");
    for (name, expected) in samples.as_object().unwrap() {
        let (shape, values) = g.dequantize(name).unwrap();
        let want_shape: Vec<usize> = expected["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, want_shape, "{name} shape");
        let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs());
        for (part, got) in [("first", &values[..64]), ("last", &values[values.len() - 64..])] {
            for (i, (a, b)) in got.iter().zip(expected[part].as_array().unwrap()).enumerate() {
                assert!(close(*a, b.as_f64().unwrap()), "{name} {part}[{i}]: {a} vs {b}");
            }
        }
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let abs_sum: f64 = values.iter().map(|&v| (v as f64).abs()).sum();
        let (want_sum, want_abs) = (expected["sum"].as_f64().unwrap(), expected["abs_sum"].as_f64().unwrap());
        assert!((abs_sum - want_abs).abs() <= 1e-6 * want_abs, "{name} abs sum {abs_sum} vs {want_abs}");
        assert!((sum - want_sum).abs() <= 1e-6 * want_abs, "{name} sum {sum} vs {want_sum}");
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let tokenizer = TextTokenizer::from_gguf(&Gguf::parse(gguf_bytes()).unwrap()).unwrap();
    let converted = std::fs::read(common::model_paths().converted.join(SMOLLM2_TOKENIZER)).unwrap();
    let reloaded = TextTokenizer::from_json(&converted).unwrap();
    let cases = fixture("tokenizer.json");
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let want = ids(&case["ids"]);
        let got = match case.get("chat") {
            Some(chat) => {
                let messages: Vec<Message> = chat
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        let role = match m["role"].as_str().unwrap() {
                            "system" => Role::System,
                            "assistant" => Role::Assistant,
                            _ => Role::User,
                        };
                        Message::new(role, m["content"].as_str().unwrap())
                    })
                    .collect();
                chat_ids(&tokenizer, &messages, true).unwrap()
            }
            None => tokenizer.encode_with_special_tokens(case["text"].as_str().unwrap()).unwrap(),
        };
        assert_eq!(got, want, "ids of {:?}", case["text"]);
        if case.get("chat").is_none() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(reloaded.encode_with_special_tokens(text).unwrap(), want, "JSON round trip of {text:?}");
            if !text.contains("<|") {
                assert_eq!(tokenizer.decode(&want).unwrap(), text, "decode of {text:?}");
            }
        }
    }
    // User text cannot smuggle in control tokens.
    let injected = tokenizer.encode_text("<|im_end|>").unwrap();
    assert!(!injected.contains(&tokenizer.im_end), "{injected:?}");
}

#[test]
fn f32_logits_and_greedy_text_match_transformers() {
    let model = load_llm(Variant::F32);
    let prompts = fixture("prompts.json");
    let mut identical_continuations = 0;
    for (i, p) in prompts["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&p["ids"]);
        let logits = next_logits(&model, &prompt);
        let reference = common::read_f32_file(&common::repo().join(format!("tests/fixtures/smollm2/logits_{i}.f32")));
        let max_err = logits.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("prompt {i}: max |logit error| {max_err:.2e}, top-1 {} vs {}", argmax(&logits), argmax(&reference));
        assert_eq!(argmax(&logits), argmax(&reference), "prompt {i}: top-1 differs");
        assert!(max_err < 2e-3, "prompt {i}: logits differ by {max_err}");

        let options = GenerateOptions { max_tokens: 32, sampling: Sampling::Greedy, stop_tokens: vec![2], no_repeat_ngram: 0 };
        let generated = block_on(generate_from_ids(&model, &prompt, &options, |_| true)).unwrap();
        let want = ids(&p["greedy_ids"]);
        // The reference keeps the stop token in its output; we stop before emitting it.
        let want_without_stop: Vec<u32> = want.iter().copied().take_while(|&t| t != 2).collect();
        eprintln!("prompt {i}: {} tokens, stop {:?}", generated.tokens.len(), generated.stop);
        if generated.tokens == want_without_stop {
            identical_continuations += 1;
            let expected_stop = if want_without_stop.len() < want.len() { StopReason::StopToken } else { StopReason::MaxTokens };
            assert_eq!(generated.stop, expected_stop);
        }
    }
    eprintln!("{identical_continuations} of 3 greedy continuations identical to the reference");
    assert!(identical_continuations >= 2, "only {identical_continuations} of 3 greedy continuations are identical");
}

#[test]
fn quantized_stays_close_to_f32() {
    let f32_model = load_llm(Variant::F32);
    let quantized_model = load_llm(Variant::Quantized);
    let prompts = fixture("prompts.json");
    let (mut agree, mut total, mut kl_sum) = (0, 0, 0.0);
    for p in prompts["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        // Every position of the prompt, not just the last: more distributions to compare.
        for end in (prompt.len() - 3)..=prompt.len() {
            let (a, b) = (next_logits(&f32_model, &prompt[..end]), next_logits(&quantized_model, &prompt[..end]));
            agree += usize::from(argmax(&a) == argmax(&b));
            total += 1;
            let (la, lb) = (log_softmax(&a), log_softmax(&b));
            kl_sum += la.iter().zip(&lb).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
        }
    }
    let mean_kl = kl_sum / total as f64;
    eprintln!("quantized vs f32: top-1 agreement {agree}/{total}, mean KL {mean_kl:.2e}");
    assert!(agree as f64 >= 0.9 * total as f64, "top-1 agreement {agree}/{total}");
    assert!(mean_kl < 0.05, "mean KL {mean_kl}");
}
