//! One line per request on standard error, written when its answer has been sent (a stream's
//! last byte, or the client gone): who, what, the status, the time, and the tokens.
//!
//! ```text
//! 2026-12-03T13:04:05Z 127.0.0.1:51234 "POST /v1/chat/completions" 200 1.234s 31+8 tokens (16 cached)
//! {"ts":1796303045.1,"client":"127.0.0.1:51234","method":"POST","path":"/v1/chat/completions","status":200,"seconds":1.234,"prompt_tokens":31,"completion_tokens":8,"cached_tokens":16}
//! ```
//!
//! Probes and scrapes (`/health`, `/ready`, `/metrics`) are left out unless they fail.

use crate::generate::Usage;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

/// The client's address, put on each request by the connection that carried it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

tokio::task_local! {
    /// The current request's token counts, filled in by its generation when it ends.
    static NOTE: Note;
}

/// Where a request's generation leaves its token counts.
#[derive(Clone, Default, Debug)]
pub struct Note(Arc<Mutex<Option<Usage>>>);

impl Note {
    /// The note of the request being handled, if it is logged.
    pub fn current() -> Option<Note> {
        NOTE.try_with(|n| n.clone()).ok()
    }

    pub fn set(&self, u: Usage) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(u);
        }
    }

    fn get(&self) -> Option<Usage> {
        self.0.lock().ok().and_then(|g| *g)
    }
}

/// The middleware: handles the request with a note in scope and logs when the body is done.
pub async fn layer(format: AccessLog, req: Request, next: Next) -> Response {
    if format == AccessLog::Off {
        return next.run(req).await;
    }
    let t0 = Instant::now();
    let client = req.extensions().get::<Peer>().map(|p| p.0);
    let method = req.method().to_string();
    // Bounded: a hostile client's 100 KB path must not become a 100 KB log line.
    let path: String = req.uri().path().chars().take(200).collect();
    let note = Note::default();
    let res = NOTE.scope(note.clone(), next.run(req)).await;
    let status = res.status().as_u16();
    let quiet = matches!(path.as_str(), "/health" | "/ready" | "/metrics") && status < 400;
    if quiet {
        return res;
    }
    let line = Line {
        format,
        t0,
        client,
        method,
        path,
        status,
        note,
    };
    let (parts, body) = res.into_parts();
    Response::from_parts(
        parts,
        Body::new(Logged {
            inner: Some(body),
            line: Some(line),
        }),
    )
}

struct Line {
    format: AccessLog,
    t0: Instant,
    client: Option<SocketAddr>,
    method: String,
    path: String,
    status: u16,
    note: Note,
}

impl Line {
    fn write(self) {
        let secs = self.t0.elapsed().as_secs_f64();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let usage = self.note.get();
        let client = self
            .client
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        let line = match self.format {
            AccessLog::Json => {
                let mut v = serde_json::json!({
                    "ts": (now.as_millis() as f64) / 1000.0,
                    "client": client,
                    "method": self.method,
                    "path": self.path,
                    "status": self.status,
                    "seconds": (secs * 1000.0).round() / 1000.0,
                });
                if let Some(u) = usage {
                    v["prompt_tokens"] = u.prompt_tokens.into();
                    v["completion_tokens"] = u.completion_tokens.into();
                    v["cached_tokens"] = u.cached_tokens.into();
                }
                v.to_string()
            }
            _ => {
                let mut s = format!(
                    "{} {client} \"{} {}\" {} {secs:.3}s",
                    rfc3339(now.as_secs()),
                    self.method,
                    self.path,
                    self.status
                );
                if let Some(u) = usage {
                    s += &format!(
                        " {}+{} tokens ({} cached)",
                        u.prompt_tokens, u.completion_tokens, u.cached_tokens
                    );
                }
                s
            }
        };
        eprintln!("{line}");
    }
}

/// A response body that writes the request's line once it is dropped (sent or abandoned).
struct Logged {
    inner: Option<Body>,
    line: Option<Line>,
}

impl http_body::Body for Logged {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // The body first: a stream's generation records its counts as it goes.
        drop(self.inner.take());
        if let Some(l) = self.line.take() {
            l.write();
        }
    }
}

/// `2026-12-03T13:04:05Z` from Unix seconds (civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_303_045), "2026-12-03T13:04:05Z");
    }
}
