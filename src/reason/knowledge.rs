//! The knowledge table (`knowledge.toml`): what every segmentable structure is, does and looks
//! like, in words a patient would use. Classes with a `left_`/`right_` prefix share one entry.
//! Training draws questions from it; answers draw their explanations' facts from it.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

const TABLE: &str = include_str!("knowledge.toml");

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    #[serde(default)]
    pub sided: bool,
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

    /// What the structure is, where and what it does, told to the patient.
    pub fn description(&self) -> String {
        let e = &self.entry;
        let place = match self.side {
            Some(side) => format!("{}, on your {} side ({})", e.location, side.word(), side.on_image()),
            None => e.location.clone(),
        };
        format!("This is the {}, {place}. It {}.", self.name(), addressed_to_reader(&e.function))
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
    fn every_class_name_resolves_once() {
        let k = Knowledge::load().unwrap();
        let names = k.class_names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.iter().all(|n| k.structure(n).is_some()), "every listed class resolves");
        assert!(names.contains(&"left_lung".to_string()) && names.contains(&"liver".to_string()));
    }
}
