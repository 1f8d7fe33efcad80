//! The knowledge table (`knowledge.toml`): what every segmentable structure is, does and looks
//! like, in words a patient would use. Classes with a `left_`/`right_` prefix share one entry.

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
}
