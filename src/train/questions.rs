//! Questions about an image and their reference answers, generated from the knowledge table
//! (MediSee's MLMR-SD recipe): explicit requests ("segment the spleen") and implicit questions
//! from five perspectives — function, location, appearance, related condition, colloquial —
//! plus follow-ups in a conversation and negatives whose target is not in the image.
//!
//! Each perspective has twelve phrasings; the last two are held out of training so evaluation
//! measures unseen phrasings. The ten training phrasings avoid the held-out ones' frames: with
//! four, the class head had learned the frames as much as the structures and read "Mark the
//! structure located filling most of the chest on both sides of the heart" as the heart.
//! Generation is deterministic for a seed.

use super::dataset::ImageItem;
use crate::reason::knowledge::{Knowledge, Structure};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Perspective {
    Explicit,
    Function,
    Location,
    Appearance,
    Condition,
    Colloquial,
}

impl Perspective {
    pub const ALL: [Perspective; 6] = [
        Perspective::Explicit,
        Perspective::Function,
        Perspective::Location,
        Perspective::Appearance,
        Perspective::Condition,
        Perspective::Colloquial,
    ];

    /// Phrasings with a `{}` slot; the last `HELD_OUT` are never used for training.
    fn templates(self) -> [&'static str; PHRASINGS] {
        match self {
            Perspective::Explicit => [
                "Segment the {}.",
                "Show me the {}.",
                "Where is the {} in this image?",
                "Outline the {}.",
                "Highlight the {} for me.",
                "Locate the {}.",
                "Which region is the {}?",
                "I'm looking for the {}.",
                "Draw a box around the {}.",
                "Is the {} visible? Show it to me.",
                "Please mark the {} on this picture.",
                "Can you find the {} here?",
            ],
            Perspective::Function => [
                "Which part of this image {}?",
                "Show me the part that {}.",
                "Where is the structure that {}?",
                "What here {}?",
                "Highlight the organ that {}.",
                "Locate whatever {}.",
                "Which region {}?",
                "Can you show what {}?",
                "Segment the structure that {}.",
                "Help me see what {}.",
                "Point out what {} in this picture.",
                "I'd like to see the part that {}.",
            ],
            Perspective::Location => [
                "What is the structure {}?",
                "Highlight what lies {}.",
                "Which structure sits {}?",
                "Segment the thing {}.",
                "Show me what is found {}.",
                "Locate the part {}.",
                "Outline the region {}.",
                "What lies {}? Show me.",
                "Which part is {}?",
                "I need to see the structure {}.",
                "Find what is {}.",
                "Mark the structure located {}.",
            ],
            Perspective::Appearance => [
                "Where is {}?",
                "Segment {}.",
                "Which region shows {}?",
                "Outline {} for me.",
                "Highlight {}.",
                "Show me {} in this image.",
                "Locate {}.",
                "I see {}. What is it? Show me.",
                "Which part looks like {}?",
                "Draw around {}.",
                "Can you point to {}?",
                "Mark {} in this picture.",
            ],
            Perspective::Condition => [
                "My doctor mentioned {}. Which part of this image is involved?",
                "Where would {} show up in this image?",
                "I was told I may have {}; show me the area concerned.",
                "Which structure is related to {}?",
                "Which part is affected by {}?",
                "Highlight the area where {} happens.",
                "Segment the structure that {} affects.",
                "I'm worried about {}. Where should I look?",
                "Show me the organ involved in {}.",
                "Where does {} start?",
                "What should I look at here for {}?",
                "Show the part of this scan linked to {}.",
            ],
            Perspective::Colloquial => [
                "Where is {}?",
                "Show me {}.",
                "Can you find {} in this picture?",
                "Which bit is {}?",
                "Highlight {}.",
                "Where's {} in this picture?",
                "Could you outline {}?",
                "Locate {} for me.",
                "Which part here is {}?",
                "Help me spot {}.",
                "Point out {}, please.",
                "I want to see {}.",
            ],
        }
    }
}

/// Phrasings per perspective, and how many of them (the last) are held out of training.
const PHRASINGS: usize = 12;
pub const HELD_OUT: usize = 2;

/// Which phrasings a generator draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phrasings {
    Train,
    HeldOut,
}

impl Phrasings {
    fn range(self) -> std::ops::Range<usize> {
        match self {
            Phrasings::Train => 0..PHRASINGS - HELD_OUT,
            Phrasings::HeldOut => PHRASINGS - HELD_OUT..PHRASINGS,
        }
    }
}

/// One earlier exchange of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Turn {
    pub question: String,
    pub answer: String,
}

/// A question with its target and reference answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Question {
    pub text: String,
    pub history: Vec<Turn>,
    pub perspective: Perspective,
    pub template: usize,
    /// The class to segment; `None` when the structure asked about is absent.
    pub target: Option<String>,
    /// What the structure asked about is (also for negatives).
    pub asked: String,
    pub answer: String,
}

/// "X-ray", "CT scan", … for answers.
pub fn modality_noun(modality: &str) -> &'static str {
    match modality {
        "xray" => "X-ray",
        "ct" => "CT scan",
        "mri" => "MRI scan",
        "ultrasound" => "ultrasound image",
        "endoscopy" => "endoscopy image",
        "dermoscopy" => "skin close-up",
        "fundus" => "photo of the back of the eye",
        "histology" => "microscope slide",
        "microscopy" => "microscope image",
        "mammography" => "mammogram",
        _ => "image",
    }
}

/// Classes of `others` never annotated in images of `modality`.
fn absent_classes<'a>(modality: &str, others: &'a [(String, Vec<String>)]) -> Vec<&'a str> {
    others.iter().filter(|(_, m)| !m.iter().any(|x| x == modality)).map(|(c, _)| c.as_str()).collect()
}

pub struct QuestionGenerator {
    knowledge: Knowledge,
    phrasings: Phrasings,
}

impl QuestionGenerator {
    pub fn new(knowledge: Knowledge, phrasings: Phrasings) -> Self {
        Self { knowledge, phrasings }
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    /// The slot filler of `perspective` for a structure; sided structures get their side.
    fn filler(&self, s: &Structure, perspective: Perspective, rng: &mut SplitMix64) -> String {
        let e = &s.entry;
        match perspective {
            Perspective::Explicit => {
                let base = if rng.below(3) == 0 && !e.synonyms.is_empty() { rng.pick(&e.synonyms).clone() } else { e.name.clone() };
                match s.side {
                    Some(side) => format!("{} {base}", side.word()),
                    None => base,
                }
            }
            Perspective::Function => e.function.clone(),
            Perspective::Location => e.location.clone(),
            Perspective::Appearance => e.appearance.clone(),
            Perspective::Condition => rng.pick(&e.conditions).clone(),
            Perspective::Colloquial => rng.pick(&e.colloquial).clone(),
        }
    }

    fn question_text(&self, s: &Structure, perspective: Perspective, template: usize, rng: &mut SplitMix64) -> String {
        let text = perspective.templates()[template].replacen("{}", &self.filler(s, perspective, rng), 1);
        match (s.side, perspective) {
            (Some(side), p) if p != Perspective::Explicit => format!("{text} I mean the one on my {} side.", side.word()),
            _ => text,
        }
    }

    fn pick_template(&self, rng: &mut SplitMix64) -> usize {
        let range = self.phrasings.range();
        range.start + rng.below(range.len())
    }

    fn ask(&self, s: &Structure, target: Option<String>, answer: String, rng: &mut SplitMix64) -> Question {
        let perspective = *rng.pick(&Perspective::ALL);
        let template = self.pick_template(rng);
        Question {
            text: self.question_text(s, perspective, template, rng),
            history: Vec::new(),
            perspective,
            template,
            target,
            asked: s.class.clone(),
            answer,
        }
    }

    /// A question whose answer is `target` (present in the image).
    pub fn positive(&self, target: &Structure, rng: &mut SplitMix64) -> Question {
        self.ask(target, Some(target.class.clone()), target.description(), rng)
    }

    /// A question about `absent`, a structure that is not in this image.
    pub fn negative(&self, absent: &Structure, modality: &str, rng: &mut SplitMix64) -> Question {
        self.ask(absent, None, absent.absent_description(modality_noun(modality)), rng)
    }

    /// A question about a class of `others` (class, modalities) that no image of `modality`
    /// shows; `None` when there is no such class.
    pub fn negative_for(&self, modality: &str, others: &[(String, Vec<String>)], rng: &mut SplitMix64) -> Option<Question> {
        let absent = absent_classes(modality, others);
        if absent.is_empty() {
            return None;
        }
        let class: &str = *rng.pick(&absent);
        let structure = self.knowledge.structure(class)?;
        Some(self.negative(&structure, modality, rng))
    }

    /// Questions for one image: one per annotated object, a follow-up that continues the
    /// conversation when there are several objects, and `negatives` questions about structures
    /// from other modalities. `other_classes` lists (class, modalities) to draw negatives from.
    pub fn for_image(&self, item: &ImageItem, other_classes: &[(String, Vec<String>)], negatives: usize, rng: &mut SplitMix64) -> Vec<Question> {
        let structures: Vec<Structure> = item.objects.iter().filter_map(|o| self.knowledge.structure(&o.class)).collect();
        let mut out: Vec<Question> = structures.iter().map(|s| self.positive(s, rng)).collect();
        if structures.len() >= 2 {
            let first = rng.below(structures.len());
            let second = (first + 1 + rng.below(structures.len() - 1)) % structures.len();
            let opening = self.positive(&structures[first], rng);
            let mut follow = self.positive(&structures[second], rng);
            follow.history = vec![Turn { question: opening.text, answer: opening.answer }];
            follow.text = format!("And now: {}", follow.text);
            out.push(follow);
        }
        for _ in 0..negatives.min(absent_classes(&item.modality, other_classes).len()) {
            out.extend(self.negative_for(&item.modality, other_classes, rng));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::dataset::{Dataset, Split};
    use super::*;

    fn generator(phrasings: Phrasings) -> QuestionGenerator {
        QuestionGenerator::new(Knowledge::load().unwrap(), phrasings)
    }

    fn chest_xray() -> ImageItem {
        ImageItem::fixture("x", "xray", &["heart", "left_lung", "right_clavicle"])
    }

    fn others() -> Vec<(String, Vec<String>)> {
        vec![("optic_disc".into(), vec!["fundus".into()]), ("heart".into(), vec!["xray".into()]), ("polyp".into(), vec!["endoscopy".into()])]
    }

    #[test]
    fn deterministic_for_a_seed() {
        let g = generator(Phrasings::Train);
        let run = |seed| g.for_image(&chest_xray(), &others(), 2, &mut SplitMix64::new(seed));
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn held_out_phrasings_never_reach_training() {
        let (train, held) = (generator(Phrasings::Train), generator(Phrasings::HeldOut));
        let mut rng = SplitMix64::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            for q in train.for_image(&chest_xray(), &others(), 1, &mut rng) {
                assert!(q.template < PHRASINGS - HELD_OUT, "{q:?}");
                seen.insert(q.perspective);
            }
            for q in held.for_image(&chest_xray(), &others(), 1, &mut rng) {
                assert!(q.template >= PHRASINGS - HELD_OUT, "{q:?}");
            }
        }
        assert_eq!(seen.len(), Perspective::ALL.len(), "every perspective is generated");
    }

    /// A training phrasing that opened like a held-out one ("Find what…", "Mark the…") would
    /// leak the held-out frame into training; phrasings within a perspective are all distinct.
    #[test]
    fn training_phrasings_do_not_open_like_held_out_ones() {
        let opening = |t: &str| t.split_whitespace().take(2).collect::<Vec<_>>().join(" ").to_lowercase();
        for p in Perspective::ALL {
            let templates = p.templates();
            let (train, held) = templates.split_at(PHRASINGS - HELD_OUT);
            for t in train {
                assert!(held.iter().all(|h| opening(h) != opening(t)), "{p:?}: {t:?} opens like a held-out phrasing");
            }
            let distinct: std::collections::HashSet<&str> = templates.iter().copied().collect();
            assert_eq!(distinct.len(), PHRASINGS, "{p:?}");
            assert!(templates.iter().all(|t| t.matches("{}").count() == 1), "{p:?}: one slot each");
        }
    }

    #[test]
    fn negatives_ask_for_absent_structures_and_say_so() {
        let g = generator(Phrasings::Train);
        let questions = g.for_image(&chest_xray(), &others(), 2, &mut SplitMix64::new(3));
        let negatives: Vec<&Question> = questions.iter().filter(|q| q.target.is_none()).collect();
        assert_eq!(negatives.len(), 2);
        for q in negatives {
            assert!(q.asked == "optic_disc" || q.asked == "polyp", "{q:?}");
            assert!(q.answer.starts_with("I can't find"), "{}", q.answer);
        }
        let follow = questions.iter().find(|q| !q.history.is_empty()).expect("a follow-up");
        assert!(follow.text.starts_with("And now:"));
        let lung = questions.iter().find(|q| q.target.as_deref() == Some("left_lung")).unwrap();
        assert!(lung.answer.contains("left side (on the right of the image)"), "{}", lung.answer);
        assert!(lung.answer.contains("lets you breathe"), "{}", lung.answer);
        for q in &questions {
            assert!(!q.text.contains('{') && !q.answer.contains('{'), "unfilled slot: {q:?}");
        }
    }

    /// Every class of the real data set (classes.json, test-only classes included) has an entry,
    /// and every entry serves some class.
    #[test]
    fn knowledge_covers_the_data_set_exactly() {
        let root = Dataset::default_root();
        if !root.join("index.jsonl").exists() {
            eprintln!("SKIPPED: ../shared/data/medseg is not beside this checkout");
            return;
        }
        let data = Dataset::load(&root).unwrap();
        let knowledge = Knowledge::load().unwrap();
        let classes = data.all_classes().unwrap();
        assert!(data.classes().keys().all(|c| classes.contains_key(c)));
        let missing: Vec<&String> = classes.keys().filter(|c| knowledge.structure(c).is_none()).collect();
        assert!(missing.is_empty(), "classes without knowledge: {missing:?}");
        let used: std::collections::HashSet<String> = classes
            .keys()
            .map(|c| c.trim_start_matches("left_").trim_start_matches("right_").to_string())
            .chain(classes.keys().cloned())
            .collect();
        let unused: Vec<&String> = knowledge.keys().filter(|k| !used.contains(*k)).collect();
        assert!(unused.is_empty(), "knowledge entries no class uses: {unused:?}");
        assert!(data.split(Split::Val).count() > 100);
    }
}
