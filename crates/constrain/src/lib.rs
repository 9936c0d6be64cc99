//! What turns a request's contract into token masks, and the model's text back into structure:
//! JSON schemas, regular expressions, Lark grammars and choices compiled by llguidance for one
//! model's vocabulary (`Vocab`, `Grammar`, `Compiled`), per-sequence matchers the engine consults
//! (`Constraint`, the engine's `TokenConstraint`), tool-call formats per model family (`tools`)
//! and the split of a reasoning model's thinking from its answer (`reasoning`).
#![forbid(unsafe_code)]

mod grammar;
mod matcher;
pub mod reasoning;
pub mod tools;
mod vocab;

pub use grammar::{Compiled, Grammar, MAX_CHOICES, MAX_SOURCE};
pub use matcher::Constraint;
pub use vocab::Vocab;

#[cfg(test)]
mod tests;
