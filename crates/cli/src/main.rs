//! `suanli`: run, chat with, inspect and measure open LLMs on the hardware at hand.
//! stdout carries only answers and requested data; progress and logs go to stderr.
#![forbid(unsafe_code)]

mod bench;
mod bench_batch;
mod bench_spec;
mod chat;
mod chat_input;
mod check;
mod constrain;
mod inspect;
mod load;
mod out;
mod random;
mod run;
mod serve;
mod tools;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "suanli",
    version,
    about = "算力 — an LLM inference engine for the hardware you have"
)]
struct Cli {
    /// CPU threads (default: the physical cores this process may use).
    #[arg(long, global = true, value_parser = parse_threads)]
    threads: Option<usize>,
    /// KV cache element type: f16 (default, as llama.cpp), q8_0 (8.5 bits) or f32.
    #[arg(long, global = true, default_value = "f16", value_parser = parse_kv)]
    kv_type: suanli_backend::KvDType,
    /// Where the model runs: cpu, cuda or cuda:N (builds with the `cuda` feature).
    #[arg(long, global = true, default_value = "cpu", value_parser = load::parse_device)]
    device: load::Device,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer one prompt, streamed to stdout.
    Run(run::RunArgs),
    /// Interactive chat with history (/reset, /exit).
    Chat(chat::ChatArgs),
    /// Download a catalog model into the cache.
    Pull { name: String },
    /// The model catalog and what is cached locally.
    List,
    /// Architecture, hyperparameters, metadata and tensors of a model file or directory.
    Inspect { path: std::path::PathBuf },
    /// Token ids of a text.
    Tokenize(tools::TokenizeArgs),
    /// Perplexity of a text file (llama.cpp's llama-perplexity method).
    Perplexity(tools::PerplexityArgs),
    /// Prefill and decode throughput (like llama-bench).
    Bench(bench::BenchArgs),
    /// Run the backend conformance suite and the golden tiny models on --device.
    CheckBackend(check::CheckArgs),
    /// Serve the OpenAI API (chat, completions, models, tokenize, metrics) with continuous batching.
    Serve(serve::ServeArgs),
    /// Internal: the server's chat-template sandbox (reads requests on stdin).
    #[command(name = "__render-template", hide = true)]
    RenderTemplate,
}

fn parse_kv(s: &str) -> Result<suanli_backend::KvDType, String> {
    suanli_backend::KvDType::parse(s)
        .ok_or_else(|| format!("{s:?} is not a KV cache type (f16, q8_0, f32)"))
}

/// At least one thread, and not an absurd number (each is an OS thread with its own stack).
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("at least 1 thread is needed".into()),
        Ok(n) if n > 1024 => Err(format!("{n} threads is more than 1024")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a thread count")),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SUANLI_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    if let (Some(n), Ok(cpus)) = (cli.threads, std::thread::available_parallelism()) {
        if n > cpus.get() {
            eprintln!(
                "warning: --threads {n} is more than the {cpus} CPUs this process may use: the \
                 threads will wait for each other (slower than --threads {cpus})"
            );
        }
    }
    let opts = load::Opts {
        threads: cli.threads,
        kv: cli.kv_type,
        device: cli.device,
    };
    let result = match cli.cmd {
        Cmd::Run(a) => run::run(a, &opts),
        Cmd::Chat(a) => chat::chat(a, &opts),
        Cmd::Pull { name } => tools::pull(&name),
        Cmd::List => tools::list(),
        Cmd::Inspect { path } => inspect::inspect(&path),
        Cmd::Tokenize(a) => tools::tokenize(a),
        Cmd::Perplexity(a) => tools::perplexity(a, &opts),
        Cmd::Bench(a) => bench::bench(a, &opts),
        Cmd::Serve(a) => serve::serve(a, &opts),
        Cmd::CheckBackend(a) => check::check_backend(a, &opts),
        Cmd::RenderTemplate => suanli_server::sandbox::serve_helper().map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
