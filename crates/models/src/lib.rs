//! Decoder-only transformer architectures, generic over the backend. One file per architecture
//! says what makes it different; `layers.rs` holds what they share. A model is a pure function of
//! (weights, batch plan, KV pages, scratch): it owns no cache and no scheduler state.
#![forbid(unsafe_code)]

mod config;
mod gemma3;
mod glm4;
mod layers;
mod llama;
mod loader;
mod qwen2;
mod qwen3;
mod rope;

pub use config::{
    Arch, ConfigError, ExactActivations, LayerAttention, Mlp, ModelConfig, RopeScaling, Yarn,
};
pub use layers::{Model, Scratch};
pub use loader::LoadError;
