//! Server-sent events (the WHATWG `text/event-stream` format) as agents stream them: a
//! serving endpoint with `stream: true`, ADK's `/run_sse`, and the company's own agent.
//!
//! [`Events`] takes the body chunk by chunk, however the network cut it, and hands back
//! each complete event; [`next_chunk`] reads the next chunk within an idle limit, so an
//! agent that stalls mid-answer is noticed rather than waited on forever.

use std::time::Duration;

use bytes::Bytes;

/// One event: its `event:` name (if any) and its `data:` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

/// An event larger than the limit: the stream is not what the reader expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Reads events out of a byte stream.
pub struct Events {
    /// Bytes of the event being received.
    pending: Vec<u8>,
    /// Largest event accepted, in bytes.
    limit: usize,
}

impl Events {
    /// A reader refusing any event larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Vec::new(),
            limit,
        }
    }

    /// Takes in `chunk`, returning every event it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, TooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some((text_end, next)) = frame_end(&self.pending) {
            let frame: Vec<u8> = self.pending.drain(..next).collect();
            events.extend(read_frame(&frame[..text_end]));
        }
        if self.pending.len() > self.limit {
            return Err(TooLarge);
        }
        Ok(events)
    }

    /// The last event, when the stream ended without the blank line that closes it.
    pub fn finish(self) -> Option<Event> {
        read_frame(&self.pending)
    }
}

/// Where the first event in `bytes` ends: (end of its text, start of the next event).
fn frame_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|at| (at, at + 2));
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|at| (at, at + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// One event's lines: `data:` lines are joined, `event:` names it, comments (`:`) and
/// other fields are ignored. `None` when it carries no data.
fn read_frame(frame: &[u8]) -> Option<Event> {
    let frame = String::from_utf8_lossy(frame);
    let mut name = None;
    let mut data: Vec<&str> = Vec::new();
    for line in frame.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => data.push(value),
            "event" => name = Some(value.to_owned()),
            _ => {}
        }
    }
    (!data.is_empty()).then(|| Event {
        name,
        data: data.join("\n"),
    })
}

/// Why a stream's next chunk did not come.
#[derive(Debug)]
pub enum Interrupted {
    /// Nothing arrived for the idle limit.
    Idle,
    /// The connection broke.
    Broken(reqwest::Error),
}

/// The next chunk of `response`'s body (`None` at its end), waiting at most `idle`.
pub async fn next_chunk(response: &mut reqwest::Response, idle: Duration) -> Result<Option<Bytes>, Interrupted> {
    match tokio::time::timeout(idle, response.chunk()).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(error)) => Err(Interrupted::Broken(error)),
        Err(_) => Err(Interrupted::Idle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Event {
        Event {
            name: None,
            data: text.to_owned(),
        }
    }

    #[test]
    fn events_are_read_however_the_network_cuts_them() {
        let body = b"data: {\"a\":1}\n\n: a comment\nevent: delta\ndata: one\ndata: two\n\ndata:x\r\n\r\n";
        for cut in 0..body.len() {
            let mut events = Events::new(1024);
            let mut seen = events.feed(&body[..cut]).unwrap();
            seen.extend(events.feed(&body[cut..]).unwrap());
            assert_eq!(
                seen,
                vec![
                    data("{\"a\":1}"),
                    Event {
                        name: Some("delta".into()),
                        data: "one\ntwo".into()
                    },
                    data("x"),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_last_event_without_its_blank_line_still_counts() {
        let mut events = Events::new(1024);
        assert!(events.feed(b"data: [DONE]").unwrap().is_empty());
        assert_eq!(events.finish(), Some(data("[DONE]")));
    }

    #[test]
    fn comments_and_empty_events_are_not_events() {
        let mut events = Events::new(1024);
        assert!(events.feed(b": keep-alive\n\nid: 7\n\n").unwrap().is_empty());
        assert_eq!(events.finish(), None);
    }

    #[test]
    fn an_event_over_the_limit_is_refused() {
        let mut events = Events::new(8);
        assert_eq!(events.feed(b"data: 0123456789"), Err(TooLarge));
    }
}
