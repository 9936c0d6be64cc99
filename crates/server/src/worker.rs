//! The engine thread: it owns the `BatchEngine` (and so the model and the KV cache), takes
//! submissions and cancellations from HTTP handlers over a channel, runs steps while there is
//! work, and sends each sequence's events back on the channel its handler gave. A handler that
//! went away (client disconnected) is noticed at its next event or by its cancel guard, and its
//! sequence is dropped at once, which frees its KV blocks before the next step.

use crate::kv_events::KvSink;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;
use suanli_backend::Backend;
use suanli_engine::batch::{BatchEngine, BatchError, Event, Request};
use suanli_engine::scheduler::SeqId;
use tokio::sync::{mpsc as tmpsc, oneshot};

/// What a handler receives for one of its sequences.
#[derive(Debug)]
pub enum Out {
    Event(Event),
    /// The engine failed while running this sequence (a backend error, not bad input).
    Failed(String),
}

pub type EventTx = tmpsc::UnboundedSender<(SeqId, Out)>;

pub enum Command {
    Submit {
        id: SeqId,
        req: Request,
        events: EventTx,
        reply: oneshot::Sender<Result<(), BatchError>>,
    },
    /// End a sequence now. `why` is counted in the metrics: "stop" when the handler saw a stop
    /// string, "cancelled" when its client went away. The handler still gets a closing `Done`.
    Cancel(SeqId, &'static str),
}

/// When the running step began, so that a hung step (a kernel that never returns) is seen:
/// `/health` reports it and waiting requests give up, instead of hanging forever.
#[derive(Default)]
pub struct StepClock {
    /// Milliseconds since `origin` at the start of the step in progress; 0 when idle.
    started: AtomicU64,
    origin: std::sync::OnceLock<Instant>,
}

/// A step running longer than this is a stall (a 512-token prefill chunk of a 7B model on a
/// slow CPU takes tens of seconds, not minutes).
pub const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

impl StepClock {
    fn now_ms(&self) -> u64 {
        self.origin.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }
    fn begin(&self) {
        self.started.store(self.now_ms(), Ordering::Relaxed);
    }
    fn end(&self) {
        self.started.store(0, Ordering::Relaxed);
    }
    /// How long the step in progress has been running, if it is past `STALL_AFTER`.
    pub fn stalled(&self) -> Option<std::time::Duration> {
        let s = self.started.load(Ordering::Relaxed);
        let d = std::time::Duration::from_millis(self.now_ms().saturating_sub(s));
        (s != 0 && d > STALL_AFTER).then_some(d)
    }
}

/// The handlers' side of the engine thread.
pub struct Worker {
    tx: mpsc::Sender<Command>,
    next_id: AtomicU64,
    pub clock: Arc<StepClock>,
}

impl Worker {
    pub fn new_id(&self) -> SeqId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queue a sequence; `Err(None)` when the engine thread is gone.
    pub async fn submit(
        &self,
        id: SeqId,
        req: Request,
        events: EventTx,
    ) -> Result<(), Option<BatchError>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit {
                id,
                req,
                events,
                reply,
            })
            .map_err(|_| None)?;
        rx.await.map_err(|_| None)?.map_err(Some)
    }

    pub fn cancel(&self, id: SeqId, why: &'static str) {
        let _ = self.tx.send(Command::Cancel(id, why));
    }
}

struct Live {
    events: EventTx,
    submitted: Instant,
    last_token: Option<Instant>,
}

/// Start the engine thread. It ends when every `Worker` handle is dropped and no work is left.
pub fn spawn<B>(
    engine: BatchEngine<B>,
    metrics: Arc<Metrics>,
    kv_events: Option<KvSink>,
) -> std::io::Result<(Arc<Worker>, std::thread::JoinHandle<()>)>
where
    B: Backend + Send + 'static,
    BatchEngine<B>: Send,
{
    let (tx, rx) = mpsc::channel();
    let clock = Arc::new(StepClock::default());
    let c = clock.clone();
    let join = std::thread::Builder::new()
        .name("suanli-engine".into())
        .spawn(move || run(engine, rx, &metrics, &c, kv_events))?;
    Ok((
        Arc::new(Worker {
            tx,
            next_id: AtomicU64::new(1),
            clock,
        }),
        join,
    ))
}

fn run<B: Backend>(
    mut engine: BatchEngine<B>,
    rx: mpsc::Receiver<Command>,
    metrics: &Metrics,
    clock: &StepClock,
    mut kv_events: Option<KvSink>,
) {
    let mut live: HashMap<SeqId, Live> = HashMap::new();
    metrics.set_gauges(&engine);
    loop {
        if engine.active() == 0 {
            // Idle: sleep until a handler asks for something (or all are gone).
            match rx.recv() {
                Ok(cmd) => handle(&mut engine, &mut live, metrics, cmd),
                Err(_) => break,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            handle(&mut engine, &mut live, metrics, cmd);
        }
        if engine.active() == 0 {
            metrics.set_gauges(&engine);
            continue;
        }
        // A bug in a step must not take the server down: the sequences in it fail, their
        // blocks are freed, and the engine goes on serving new requests.
        clock.begin();
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.step()))
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("internal error in the engine step: {msg}")
            })
            .and_then(|r| r.map_err(|e| e.to_string()));
        clock.end();
        metrics.step(t0.elapsed());
        if let Some(why) = engine.take_draft_error() {
            tracing::warn!(
                "the draft model failed and drafts no more (answers are unaffected): {why}"
            );
        }
        match result {
            Ok(events) => {
                let now = Instant::now();
                for (id, ev) in events {
                    dispatch(&mut engine, &mut live, metrics, id, ev, now);
                }
            }
            Err(e) => {
                tracing::error!("engine step failed: {e}");
                for (id, l) in live.drain() {
                    let _ = l.events.send((id, Out::Failed(e.to_string())));
                    engine.cancel(id);
                    metrics.finished("error");
                }
            }
        }
        if let Some(sink) = &mut kv_events {
            sink.publish(&engine.take_kv_events());
        }
        metrics.set_gauges(&engine);
    }
}

fn handle<B: Backend>(
    engine: &mut BatchEngine<B>,
    live: &mut HashMap<SeqId, Live>,
    metrics: &Metrics,
    cmd: Command,
) {
    match cmd {
        Command::Submit {
            id,
            req,
            events,
            reply,
        } => {
            let prompt_len = req.prompt.len();
            let res = engine.submit(id, req);
            if res.is_ok() {
                metrics.prompt(prompt_len);
                live.insert(
                    id,
                    Live {
                        events,
                        submitted: Instant::now(),
                        last_token: None,
                    },
                );
            }
            if reply.send(res).is_err() {
                // The handler is gone already.
                if live.remove(&id).is_some() {
                    engine.cancel(id);
                }
            }
        }
        Command::Cancel(id, why) => {
            if let Some(l) = live.remove(&id) {
                if let Some(done) = engine.cancel(id) {
                    if let Event::Done { cached_tokens, .. } = done {
                        metrics.cached(cached_tokens);
                    }
                    let _ = l.events.send((id, Out::Event(done)));
                }
                metrics.finished(why);
            }
        }
    }
}

fn dispatch<B: Backend>(
    engine: &mut BatchEngine<B>,
    live: &mut HashMap<SeqId, Live>,
    metrics: &Metrics,
    id: SeqId,
    ev: Event,
    now: Instant,
) {
    let Some(l) = live.get_mut(&id) else {
        return;
    };
    match &ev {
        Event::PromptLogprobs(_) => {}
        Event::Failed(why) => {
            tracing::error!(seq = id, "sequence failed: {why}");
            metrics.finished("error");
        }
        Event::Token { .. } => {
            match l.last_token {
                None => metrics.ttft(now - l.submitted),
                Some(t) => metrics.itl(now - t),
            }
            l.last_token = Some(now);
            metrics.generated(1);
        }
        Event::Done {
            reason,
            prompt_tokens,
            cached_tokens,
            completion_tokens,
        } => {
            tracing::info!(
                seq = id,
                prompt_tokens,
                cached_tokens,
                completion_tokens,
                reason = reason.as_str(),
                seconds = (now - l.submitted).as_secs_f64(),
                "finished"
            );
            metrics.cached(*cached_tokens);
            metrics.finished(reason.as_str());
        }
    }
    let done = matches!(ev, Event::Done { .. } | Event::Failed(_));
    if l.events.send((id, Out::Event(ev))).is_err() {
        // Nobody listens any more: free the sequence now.
        live.remove(&id);
        if !done {
            engine.cancel(id);
            metrics.finished("cancelled");
        }
    } else if done {
        live.remove(&id);
    }
}
