//! The engine: KV block allocation, sampling, the generation loop and perplexity.
//! It sees tokens and plain batch plans, never tensors.
#![forbid(unsafe_code)]

pub mod batch;
pub mod constraint;
pub mod kv;
pub mod kv_events;
pub mod perplexity;
pub mod sampler;
pub mod scheduler;
mod seq_cache;
pub mod session;
pub mod spec;
pub mod stop;

pub use constraint::TokenConstraint;
pub use sampler::{Sampler, SamplingParams};
pub use session::{FinishReason, Generation, Session, SessionError};
