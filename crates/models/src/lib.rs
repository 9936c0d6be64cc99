//! Decoder-only transformer architectures, generic over the backend. One file per architecture
//! says what makes it different; `layers.rs` holds what they share. A model is a pure function of
//! (weights, batch plan, KV pages, scratch): it owns no cache and no scheduler state.
#![forbid(unsafe_code)]

mod config;
mod experts;
mod gemma3;
mod glm4;
mod layers;
mod llama;
mod loader;
mod moe;
mod qwen2;
mod qwen2_moe;
mod qwen3;
mod qwen3_moe;
mod requantize;
mod rope;

pub use config::{
    Arch, ConfigError, ExactActivations, FeedForward, LayerAttention, Mlp, ModelConfig, Moe,
    RopeScaling, Yarn,
};
pub use layers::{DraftLoad, HeadRows, Model, Scratch};
pub use loader::LoadError;
pub use requantize::{Requantize, Requantized};
