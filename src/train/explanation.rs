//! The explanation phase: the LM cross-entropy on the answer text (MediSee's text loss). SmolLM2
//! stays frozen, so what learns is the explanation's soft prompt ([`ExplanationPrompt`]): given
//! the knowledge table's facts and a generated question, the answer after the opening should be
//! the reference answer ([`reference_answer`]: what the structure does, then where it is). It
//! needs no image: the explanation reads the facts of the structure the mask path found.
//!
//! Measured on questions in the held-out phrasings: the loss with no soft prompt (the explanation
//! before this phase), with the starting one and with the trained one; and, generated greedily
//! with the shipped 4-bit model, how much of the reference's facts each explanation states and
//! how many of its words are in none of the facts or the question (a measure of made-up content).

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Tensor;
use futures_lite::future::block_on;

use super::losses::cross_entropy;
use super::questions::{Phrasings, QuestionGenerator};
use super::trainer::learning_rate;
use crate::error::Result;
use crate::llm::llama::{KvCache, Llama};
use crate::llm::TextModel;
use crate::reason::explanation::{continue_after_opening, generate_options, input_embeddings, reference_answer, ExplanationIds, ExplanationPrompt};
use crate::reason::knowledge::{Knowledge, Structure};
use crate::rng::SplitMix64;

/// Words the soft prompt starts from (cycled to its length).
const START_TEXT: &str = " Say what it does, then where it is.";

#[derive(Debug, Clone)]
pub struct ExplanationConfig {
    pub steps: usize,
    /// Questions per step (the mean of their losses, one backward pass).
    pub batch: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Held-out-phrasing questions the loss is measured on, and explanations generated on.
    pub held_out_questions: usize,
    /// Measure the held-out loss every this many steps.
    pub measure_every: usize,
}

/// One question with its ids: the chat and opening, then the reference answer to learn.
struct Example {
    question: String,
    structure: Structure,
    ids: ExplanationIds,
    /// The reference answer's ids and the end of turn.
    answer: Vec<u32>,
}

fn examples(llm: &TextModel, phrasings: Phrasings, count: usize, seed: u64) -> Result<Vec<Example>> {
    let generator = QuestionGenerator::new(Knowledge::load()?, phrasings);
    let classes = generator.knowledge().class_names();
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let structure = generator.knowledge().structure(rng.pick(classes.as_slice()).as_str()).expect("class names resolve");
            let question = generator.positive(&structure, &mut rng).text;
            let ids = ExplanationIds::new(&llm.tokenizer, &question, &structure)?;
            let mut answer = llm.tokenizer.encode_text(&reference_answer(&structure))?;
            answer.push(llm.tokenizer.im_end);
            Ok(Example { question, structure, ids, answer })
        })
        .collect()
}

/// Mean cross-entropy of the example's answer tokens after its opening (teacher forcing): the
/// hidden state at position i predicts the token at i + 1.
fn answer_loss(llm: &Llama, prompt: Option<&ExplanationPrompt>, example: &Example) -> Result<Tensor<1>> {
    let after: Vec<u32> = example.ids.opening.iter().chain(&example.answer).copied().collect();
    let inputs = input_embeddings(llm, prompt, &example.ids.chat, &after);
    let first = example.ids.chat.len() + prompt.map_or(0, ExplanationPrompt::count) + example.ids.opening.len() - 1;
    let hidden = llm.forward_embeddings(inputs, &mut KvCache::new())?.hidden;
    let n = example.answer.len();
    let logits = llm.output.forward(hidden.narrow(1, first, n).reshape([n, llm.hidden_size()]));
    let targets: Vec<usize> = example.answer.iter().map(|&t| t as usize).collect();
    Ok(cross_entropy(logits, &targets))
}

/// Mean answer loss over `examples`, without gradients.
fn mean_loss(llm: &Llama, prompt: Option<&ExplanationPrompt>, examples: &[Example]) -> Result<f64> {
    let mut total = 0.0;
    for example in examples {
        total += f64::from(answer_loss(llm, prompt, example)?.into_scalar::<f32>());
    }
    Ok(total / examples.len().max(1) as f64)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CurvePoint {
    pub step: usize,
    /// Mean training loss of the steps since the last point.
    pub train_loss: f64,
    pub held_out_loss: f64,
}

/// Greedy explanations of the held-out questions, with or without the soft prompt.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GeneratedStats {
    /// Share of the reference answer's content words the explanation states.
    pub fact_recall: f64,
    /// Share of the explanation's content words found in none of the facts, the question or the
    /// reference answer: made-up content.
    pub unsupported_words: f64,
    pub mean_words: f64,
    /// Share that ended by themselves within the token budget.
    pub finished: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExplanationReport {
    pub steps: usize,
    pub batch: usize,
    pub vectors: usize,
    pub held_out_questions: usize,
    pub held_out_loss_without_prompt: f64,
    pub held_out_loss_start: f64,
    pub held_out_loss_trained: f64,
    pub curve: Vec<CurvePoint>,
    pub generated_without_prompt: GeneratedStats,
    pub generated_trained: GeneratedStats,
    /// A few held-out questions with both explanations, for reading.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub question: String,
    pub structure: String,
    pub without_prompt: String,
    pub trained: String,
}

/// Trains the soft prompt on `llm` (f32, on an autodiff device, frozen); `shipped` (the 4-bit
/// model, no autodiff) generates the report's explanations.
pub fn train_explanation(llm: &TextModel, shipped: &TextModel, count: usize, config: &ExplanationConfig, log: &mut dyn FnMut(&str)) -> Result<(ExplanationPrompt, ExplanationReport)> {
    let train = examples(llm, Phrasings::Train, config.steps * config.batch, config.seed)?;
    let held_out = examples(llm, Phrasings::HeldOut, config.held_out_questions, config.seed ^ 0x5eed)?;
    let start_ids = llm.tokenizer.encode_text(START_TEXT)?;
    let mut prompt = ExplanationPrompt::from_text(&llm.model, &start_ids, count);
    let without_prompt = mean_loss(&llm.model, None, &held_out)?;
    let start = mean_loss(&llm.model, Some(&prompt), &held_out)?;
    log(&format!("explanation: held-out answer loss {without_prompt:.4} without a soft prompt, {start:.4} with the starting one"));
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut curve = Vec::new();
    let (mut since, mut since_steps) = (0.0, 0);
    let clock = std::time::Instant::now();
    for (step, batch) in train.chunks(config.batch).enumerate() {
        let losses = batch.iter().map(|example| answer_loss(&llm.model, Some(&prompt), example)).collect::<Result<Vec<_>>>()?;
        let loss = Tensor::cat(losses, 0).mean();
        since += f64::from(loss.clone().into_scalar::<f32>());
        since_steps += 1;
        let grads = GradientsParams::from_grads(loss.backward(), &prompt);
        prompt = optim.step(learning_rate(config.learning_rate, step, config.steps), prompt, grads);
        let done = step + 1;
        if done % config.measure_every == 0 || done == config.steps {
            let held = mean_loss(&llm.model, Some(&prompt), &held_out)?;
            let per_step = clock.elapsed().as_secs_f64() / done as f64;
            log(&format!(
                "explanation step {done}/{} loss {:.4} held-out {held:.4} ({per_step:.1} s/step, {:.0} min left)",
                config.steps,
                since / since_steps as f64,
                per_step * (config.steps - done) as f64 / 60.0
            ));
            curve.push(CurvePoint { step: done, train_loss: since / since_steps as f64, held_out_loss: held });
            (since, since_steps) = (0.0, 0);
        }
    }
    let trained = curve.last().map_or(start, |p| p.held_out_loss);
    let shipped_prompt = prompt.valid().to_device(&shipped.model.output.weight.device());
    let (without_stats, without_texts) = generated_stats(shipped, None, &held_out)?;
    let (trained_stats, trained_texts) = generated_stats(shipped, Some(&shipped_prompt), &held_out)?;
    log(&format!("explanation: generated without a soft prompt {without_stats:?}"));
    log(&format!("explanation: generated with the trained one {trained_stats:?}"));
    let samples = held_out
        .iter()
        .zip(without_texts.into_iter().zip(trained_texts))
        .take(12)
        .map(|(e, (without_prompt, trained))| Sample { question: e.question.clone(), structure: e.structure.name(), without_prompt, trained })
        .collect();
    let report = ExplanationReport {
        steps: config.steps,
        batch: config.batch,
        vectors: count,
        held_out_questions: held_out.len(),
        held_out_loss_without_prompt: without_prompt,
        held_out_loss_start: start,
        held_out_loss_trained: trained,
        curve,
        generated_without_prompt: without_stats,
        generated_trained: trained_stats,
        samples,
    };
    Ok((prompt, report))
}

/// Lower-case words of at least four letters: the content a fact recall can check.
fn content_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphabetic()).filter(|w| w.len() >= 4).map(str::to_lowercase).collect()
}

/// How an explanation of `structure` in answer to `question` keeps to the facts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grade {
    /// Share of the reference answer's content words the explanation states.
    pub fact_recall: f64,
    /// Share of its content words in none of the facts, the question or the reference.
    pub unsupported_words: f64,
    pub words: usize,
}

/// Grades `continuation`, an explanation after its opening.
pub fn grade(structure: &Structure, question: &str, continuation: &str) -> Grade {
    let said = content_words(continuation);
    let reference_text = reference_answer(structure);
    let reference = content_words(&reference_text);
    let recalled = reference.iter().filter(|w| said.contains(w)).count();
    // The reference holds the function (as told to the reader) and the place with its side.
    let sources = [structure.entry.name.as_str(), &structure.entry.appearance, question, &reference_text].join(" ");
    let supported = content_words(&sources);
    let unsupported = said.iter().filter(|w| !supported.contains(w)).count();
    Grade {
        fact_recall: recalled as f64 / reference.len().max(1) as f64,
        unsupported_words: unsupported as f64 / said.len().max(1) as f64,
        words: continuation.split_whitespace().count(),
    }
}

fn generated_stats(llm: &TextModel, prompt: Option<&ExplanationPrompt>, examples: &[Example]) -> Result<(GeneratedStats, Vec<String>)> {
    let options = generate_options(&llm.tokenizer);
    let mut stats = GeneratedStats::default();
    let mut texts = Vec::new();
    for example in examples {
        let generated = block_on(continue_after_opening(&llm.model, prompt, &example.ids, &options, |_| true))?;
        let text = llm.tokenizer.decode(&generated.tokens)?;
        let grade = grade(&example.structure, &example.question, &text);
        stats.fact_recall += grade.fact_recall;
        stats.unsupported_words += grade.unsupported_words;
        stats.mean_words += grade.words as f64;
        stats.finished += f64::from(u8::from(generated.stop == crate::llm::generate::StopReason::StopToken));
        texts.push(text.trim_end().to_string());
    }
    let n = examples.len().max(1) as f64;
    for v in [&mut stats.fact_recall, &mut stats.unsupported_words, &mut stats.mean_words, &mut stats.finished] {
        *v /= n;
    }
    Ok((stats, texts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::llama::LlamaConfig;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Int, TensorData};

    fn example(answer: Vec<u32>) -> Example {
        let structure = Knowledge::load().unwrap().structure("liver").unwrap();
        let ids = ExplanationIds { chat: vec![3, 9, 27, 4, 11], opening: vec![5, 40, 2] };
        Example { question: String::new(), structure, ids, answer }
    }

    /// The loss must score each answer token with the logits that predict it: the same numbers
    /// as feeding the answer token by token through the cache, as generation does. Reading the
    /// hidden states one position late or early gives other logits.
    #[test]
    fn the_answer_loss_scores_each_token_where_generation_predicts_it() {
        let device = Device::flex();
        let llm = LlamaConfig::tiny(64).init(&device);
        let prompt = ExplanationPrompt::new(3, llm.hidden_size(), &device);
        let example = example(vec![17, 8, 33, 1]);
        let loss = f64::from(answer_loss(&llm, Some(&prompt), &example).unwrap().into_scalar::<f32>());

        let mut cache = KvCache::new();
        let hidden = llm.forward_embeddings(input_embeddings(&llm, Some(&prompt), &example.ids.chat, &example.ids.opening), &mut cache).unwrap().hidden;
        let mut logits = llm.last_logits(hidden);
        let mut stepwise = 0.0;
        for &token in &example.answer {
            let index = Tensor::<2, Int>::from_data(TensorData::new(vec![token as i64], [1, 1]), &device);
            stepwise -= f64::from(log_softmax(logits, 1).gather(1, index).into_scalar::<f32>());
            logits = llm.next_token_logits(token, &mut cache).unwrap();
        }
        stepwise /= example.answer.len() as f64;
        assert!((loss - stepwise).abs() < 1e-4, "teacher-forced {loss} vs step by step {stepwise}");
        let without = f64::from(answer_loss(&llm, None, &example).unwrap().into_scalar::<f32>());
        assert!((loss - without).abs() > 1e-4, "the soft prompt is read");
    }

    /// Gradients reach the soft prompt through the frozen model, and a few steps lower the loss.
    #[test]
    fn training_the_soft_prompt_lowers_the_answer_loss() {
        let device = Device::flex().autodiff();
        let llm = LlamaConfig::tiny(64).init(&device).no_grad();
        let mut prompt = ExplanationPrompt::new(3, llm.hidden_size(), &device);
        let example = example(vec![17, 8, 33, 1]);
        let before = f64::from(answer_loss(&llm, Some(&prompt), &example).unwrap().into_scalar::<f32>());
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        for _ in 0..20 {
            let loss = answer_loss(&llm, Some(&prompt), &example).unwrap();
            let grads = GradientsParams::from_grads(loss.backward(), &prompt);
            prompt = optim.step(0.05, prompt, grads);
        }
        let after = f64::from(answer_loss(&llm, Some(&prompt), &example).unwrap().into_scalar::<f32>());
        assert!(after < before - 0.05, "{before} → {after}");
    }

    #[test]
    fn grading_counts_stated_facts_and_made_up_words() {
        let e = example(vec![]);
        let reference = reference_answer(&e.structure);
        let full = grade(&e.structure, "", &reference);
        assert_eq!((full.fact_recall, full.unsupported_words), (1.0, 0.0));
        let made_up = grade(&e.structure, "", " which is a purple banana.");
        assert_eq!(made_up.words, 5);
        assert!(made_up.fact_recall < 0.2 && made_up.unsupported_words > 0.5, "{made_up:?}");
    }
}
