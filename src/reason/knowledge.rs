//! The knowledge table (`knowledge.toml`): what every segmentable structure is, does and looks
//! like, in words a patient would use. Classes with a `left_`/`right_` prefix share one entry.
//! Training draws questions from it; answers draw their explanations' facts from it.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

const TABLE: &str = include_str!("knowledge.toml");

/// Structures the data annotates only as their parts on some images; an image with every part
/// also gets the whole, whose mask is the union of the parts'. JSRT chest X-rays have
/// `left_lung` and `right_lung`, but a patient asks for "the lungs" ("which parts help me
/// breathe?"): without this the class `lungs` would only ever be seen on eight lung CT slices.
pub const WHOLES: &[(&str, &[&str])] = &[("lungs", &["left_lung", "right_lung"])];

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    /// Where in the body it is imaged; two structures of different regions are never in one image.
    pub region: String,
    #[serde(default)]
    pub sided: bool,
    /// A plural name ("lungs", "cell nuclei"): its `function` is written with a plural verb.
    #[serde(default)]
    pub plural: bool,
    pub synonyms: Vec<String>,
    pub function: String,
    pub location: String,
    pub appearance: String,
    pub conditions: Vec<String>,
    pub colloquial: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub fn word(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    /// The one side a question names as a word ("…my left lung", "…the one on my right side"),
    /// if it names exactly one; "left"/"right" mean the patient's side, as in the generated
    /// questions and the table's descriptions.
    pub fn named_in(question: &str) -> Option<Side> {
        let words: Vec<String> = question.split(|c: char| !c.is_alphabetic()).map(str::to_lowercase).collect();
        match (words.iter().any(|w| w == "left"), words.iter().any(|w| w == "right")) {
            (true, false) => Some(Side::Left),
            (false, true) => Some(Side::Right),
            _ => None,
        }
    }

    /// Where the patient's side shows up on a radiological image.
    pub fn on_image(self) -> &'static str {
        match self {
            Side::Left => "on the right of the image",
            Side::Right => "on the left of the image",
        }
    }
}

/// A data set class resolved against the table.
#[derive(Debug, Clone)]
pub struct Structure {
    pub class: String,
    pub side: Option<Side>,
    pub entry: Entry,
}

impl Structure {
    /// "left lung", "liver".
    pub fn name(&self) -> String {
        match self.side {
            Some(side) => format!("{} {}", side.word(), self.entry.name),
            None => self.entry.name.clone(),
        }
    }

    /// Where it is, with the side for sided structures, told to the patient.
    pub fn place(&self) -> String {
        let e = &self.entry;
        match self.side {
            Some(side) => format!("{}, on your {} side ({})", e.location, side.word(), side.on_image()),
            None => e.location.clone(),
        }
    }

    /// What the structure is, where and what it does, told to the patient.
    pub fn description(&self) -> String {
        format!("This is the {}, {}. It {}.", self.name(), self.place(), addressed_to_reader(&self.entry.function))
    }

    /// The honest answer when the structure is not in the image (`image` names the kind of image).
    pub fn absent_description(&self, image: &str) -> String {
        format!(
            "I can't find the {} in this {image}. The {} {}, but it is not visible here.",
            self.name(),
            self.entry.name,
            addressed_to_reader(&self.entry.function)
        )
    }
}

/// The knowledge table speaks as the patient ("lets me breathe"); answers speak to them.
pub fn addressed_to_reader(text: &str) -> String {
    text.split(' ')
        .map(|word| match word {
            "me" => "you",
            "my" => "your",
            "I" => "you",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone)]
pub struct Knowledge {
    entries: BTreeMap<String, Entry>,
}

impl Knowledge {
    pub fn load() -> Result<Self> {
        let entries: BTreeMap<String, Entry> =
            toml::from_str(TABLE).map_err(|e| Error::Other(format!("knowledge.toml: {e}")))?;
        Ok(Self { entries })
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Every class name the table resolves (`liver`, `lung`, `left_lung`, `right_lung`, …), in a
    /// fixed order: the rows of the trained class head.
    pub fn class_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (key, entry) in &self.entries {
            names.push(key.clone());
            if entry.sided {
                names.push(format!("left_{key}"));
                names.push(format!("right_{key}"));
            }
        }
        names
    }

    /// Which classes (rows as in [`Self::class_names`]) a question rules out by naming one side:
    /// the other side's structures, and the side-less forms of sided ones — `lung`, and `lungs`
    /// (a whole of sided parts). The class head reads a 135 M model's states, which keep "left"
    /// and "right" apart poorly (it took "the right clavicle" for the left one in half the
    /// evaluation questions); the word itself is unambiguous.
    pub fn ruled_out_by_side(&self, question: &str) -> Vec<bool> {
        let names = self.class_names();
        let Some(side) = Side::named_in(question) else {
            return vec![false; names.len()];
        };
        let sided_whole = |class: &str| WHOLES.iter().any(|(whole, parts)| *whole == class && parts.iter().all(|p| self.structure(p).is_some_and(|s| s.side.is_some())));
        names
            .iter()
            .map(|class| {
                let structure = self.structure(class).expect("class names resolve");
                match structure.side {
                    Some(s) => s != side,
                    None => structure.entry.sided || sided_whole(class),
                }
            })
            .collect()
    }

    /// The entry for a data set class (`left_lung` → the sided `lung` entry).
    pub fn structure(&self, class: &str) -> Option<Structure> {
        if let Some(entry) = self.entries.get(class) {
            return Some(Structure { class: class.into(), side: None, entry: entry.clone() });
        }
        let (side, base) = if let Some(base) = class.strip_prefix("left_") {
            (Side::Left, base)
        } else {
            (Side::Right, class.strip_prefix("right_")?)
        };
        let entry = self.entries.get(base).filter(|e| e.sided)?;
        Some(Structure { class: class.into(), side: Some(side), entry: entry.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sided_classes_resolve_to_their_base_entry() {
        let k = Knowledge::load().unwrap();
        let lung = k.structure("left_lung").unwrap();
        assert_eq!((lung.name(), lung.side), ("left lung".to_string(), Some(Side::Left)));
        assert_eq!(k.structure("liver").unwrap().name(), "liver");
        assert!(k.structure("left_liver").is_none(), "liver is not sided");
        assert!(k.structure("unknown_thing").is_none());
    }

    #[test]
    fn naming_one_side_rules_out_the_other_and_the_sideless_forms() {
        let k = Knowledge::load().unwrap();
        let names = k.class_names();
        let ruled_out = |question: &str| -> Vec<&str> {
            k.ruled_out_by_side(question).iter().zip(&names).filter(|(out, _)| **out).map(|(_, n)| n.as_str()).collect()
        };
        let right = ruled_out("Please mark the right collarbone. I mean the one on my RIGHT side.");
        for class in ["left_clavicle", "left_lung", "lungs"] {
            assert!(right.contains(&class), "{class} in {right:?}");
        }
        for class in ["right_clavicle", "right_lung", "heart", "liver", "lv_cavity"] {
            assert!(!right.contains(&class), "{class} in {right:?}");
        }
        assert!(ruled_out("Where is my left lung?").contains(&"right_lung"));
        // No side, both sides, or "left" inside another word: nothing is ruled out.
        for question in ["Which parts help me breathe?", "Show the left and the right lung.", "What is leftover here?"] {
            assert!(ruled_out(question).is_empty(), "{question}: {:?}", ruled_out(question));
        }
    }

    /// Answers put a function after its structure's name ("the lungs, which let you breathe"),
    /// so the verb must agree with the name: every singular verb of the table ends in "s".
    #[test]
    fn functions_agree_with_their_structures_number() {
        let k = Knowledge::load().unwrap();
        for key in k.keys() {
            let e = &k.structure(key).unwrap().entry;
            let verb = e.function.split(' ').next().unwrap();
            assert_eq!(!verb.ends_with('s'), e.plural, "{key}: \"{}\" with plural = {}", e.function, e.plural);
        }
    }

    #[test]
    fn every_class_name_resolves_once() {
        let k = Knowledge::load().unwrap();
        let names = k.class_names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.iter().all(|n| k.structure(n).is_some()), "every listed class resolves");
        assert!(names.contains(&"left_lung".to_string()) && names.contains(&"liver".to_string()));
    }
}
