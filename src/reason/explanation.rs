//! The explanation's input to the language model: the knowledge table's facts about the structure
//! found and the patient's question as a chat, a trained soft prompt (prompt tuning: input
//! vectors outside the vocabulary, like the candidate tokens) at the start of the answer, and an
//! opening that names the structure. Training (the LM cross-entropy on the answer text,
//! `train::explanation`) and `Reasoner::explain` build it here, so both see the same positions.
//!
//! ```text
//! <|im_start|>system\n{EXPLAINER_SYSTEM + facts}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n
//! <|im_start|>assistant\n [p_1 … p_P] The highlighted part is the {name},{answer…}
//! ```

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use super::knowledge::{addressed_to_reader, Structure};
use super::text_embeddings;
use crate::error::Result;
use crate::llm::chat::{chat_ids, Message, Role};
use crate::llm::generate::{generate, GenerateOptions, Generated, Sampling};
use crate::llm::llama::{KvCache, Llama};
use crate::llm::tokenizer::TextTokenizer;

const EXPLAINER_SYSTEM: &str = "You are medsee. You explain a highlighted part of a medical image to a patient in plain, kind words. \
You use only the facts you are given and never give a diagnosis.";

/// The conversation that asks the language model to explain what was found. The facts come in
/// the order the answer gives them, each as the answer words it (the place with the patient's
/// side): a fact the answer states must be in the prompt, or training teaches the model to
/// make it up.
fn messages(question: &str, structure: &Structure) -> Vec<Message> {
    let system = format!(
        "{EXPLAINER_SYSTEM}\nThe highlighted part is the {}.\n- What it does: it {}.\n- Where it is: {}.\n- What it looks like: {}.\n\
         Answer the patient's question in two short sentences, using only these facts.",
        structure.name(),
        addressed_to_reader(&structure.entry.function),
        structure.place(),
        structure.entry.appearance,
    );
    vec![Message::new(Role::System, system), Message::new(Role::User, question)]
}

/// What every explanation of a found structure starts with: naming it first keeps a 135 M model
/// from drifting to another structure.
pub fn opening(structure: &Structure) -> String {
    format!("The highlighted part is the {},", structure.name())
}

/// The answer text the soft prompt is trained to continue the opening with: what the structure
/// does, then where it is — the two facts a patient's question is about — and nothing else.
pub fn reference_answer(structure: &Structure) -> String {
    let pronoun = if structure.entry.plural { "them" } else { "it" };
    format!(" which {}. You can see {pronoun} {}.", addressed_to_reader(&structure.entry.function), structure.place())
}

/// Most tokens an explanation may take.
pub const MAX_TOKENS: usize = 80;
/// No 6-gram twice: long enough that a structure's name or a place can come up again.
const NO_REPEAT_NGRAM: usize = 6;

/// How an explanation is generated: greedily (the CLI and the page give the same words), to the
/// end of the turn, without loops.
pub fn generate_options(tokenizer: &TextTokenizer) -> GenerateOptions {
    GenerateOptions {
        max_tokens: MAX_TOKENS,
        sampling: Sampling::Greedy,
        stop_tokens: vec![tokenizer.im_end, tokenizer.end_of_text],
        no_repeat_ngram: NO_REPEAT_NGRAM,
    }
}

/// The explanation's token ids around the soft prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplanationIds {
    /// The chat up to the start of the answer (`…<|im_start|>assistant\n`).
    pub chat: Vec<u32>,
    /// The opening, after the soft prompt.
    pub opening: Vec<u32>,
}

impl ExplanationIds {
    pub fn new(tokenizer: &TextTokenizer, question: &str, structure: &Structure) -> Result<Self> {
        Ok(Self { chat: chat_ids(tokenizer, &messages(question, structure), true)?, opening: tokenizer.encode_text(&opening(structure))? })
    }
}

/// The trained soft prompt: `[P, D]` input vectors put before the answer's opening.
#[derive(Module, Debug)]
pub struct ExplanationPrompt {
    pub vectors: Param<Tensor<2>>,
}

impl ExplanationPrompt {
    /// Small random vectors; [`Self::from_text`] gives training a better start.
    pub fn new(count: usize, dim: usize, device: &Device) -> Self {
        Self { vectors: Param::from_tensor(Tensor::random([count, dim], Distribution::Normal(0.0, 0.02), device)) }
    }

    /// The input embeddings of `ids`, repeated or cut to `count` vectors: prompt tuning learns
    /// faster from words than from noise (Lester et al., 2021).
    pub fn from_text(llm: &Llama, ids: &[u32], count: usize) -> Self {
        let cycled: Vec<u32> = ids.iter().copied().cycle().take(count).collect();
        let vectors = text_embeddings(llm, &cycled, &llm.output.weight.device()).reshape([count, llm.hidden_size()]).detach();
        Self { vectors: Param::from_tensor(vectors) }
    }

    pub fn count(&self) -> usize {
        self.vectors.dims()[0]
    }
}

/// `[1, chat + P + after, D]`: the chat, the soft prompt (none: the untrained explanation),
/// then `after` (the opening, and in training the answer text after it).
pub fn input_embeddings(llm: &Llama, prompt: Option<&ExplanationPrompt>, chat: &[u32], after: &[u32]) -> Tensor<3> {
    let device = llm.output.weight.device();
    let mut parts = vec![text_embeddings(llm, chat, &device)];
    parts.extend(prompt.map(|p| p.vectors.val().unsqueeze()));
    parts.push(text_embeddings(llm, after, &device));
    Tensor::cat(parts, 1)
}

/// The explanation after its opening: one prefill over the chat, the soft prompt and the
/// opening, then generation (see [`generate`]).
pub async fn continue_after_opening(
    llm: &Llama,
    prompt: Option<&ExplanationPrompt>,
    ids: &ExplanationIds,
    options: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generated> {
    let mut cache = KvCache::new();
    let hidden = llm.forward_embeddings(input_embeddings(llm, prompt, &ids.chat, &ids.opening), &mut cache)?.hidden;
    generate(llm, &mut cache, llm.last_logits(hidden), options, on_token).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::knowledge::Knowledge;

    /// Every fact of the reference answer is in the prompt it answers.
    #[test]
    fn the_prompt_holds_every_fact_the_reference_answer_states() {
        let k = Knowledge::load().unwrap();
        for class in ["left_lung", "lungs", "liver"] {
            let structure = k.structure(class).unwrap();
            let system = &messages("Where is it?", &structure)[0].content;
            assert!(system.contains(&structure.place()) && system.contains(&addressed_to_reader(&structure.entry.function)), "{class}: {system}");
        }
    }

    #[test]
    fn reference_answers_agree_with_the_structure_and_name_its_side() {
        let k = Knowledge::load().unwrap();
        let lungs = reference_answer(&k.structure("lungs").unwrap());
        assert!(lungs.starts_with(" which let you breathe") && lungs.contains("see them filling"), "{lungs}");
        let left = reference_answer(&k.structure("left_lung").unwrap());
        assert!(left.starts_with(" which lets you breathe") && left.contains("see it ") && left.contains("on your left side (on the right of the image)"), "{left}");
        assert_eq!(opening(&k.structure("left_lung").unwrap()), "The highlighted part is the left lung,");
    }
}
