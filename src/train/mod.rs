//! Training data (native only): the medseg data set from `../shared`, the knowledge table, and
//! the generator of implicit, explicit, follow-up and negative questions.

pub mod cache;
pub mod calibrate;
pub mod chart;
pub mod dataset;
pub mod eval;
pub mod explanation;
pub mod losses;
pub mod place;
pub mod questions;
pub mod targets;
pub mod thresholds;
pub mod trainer;
