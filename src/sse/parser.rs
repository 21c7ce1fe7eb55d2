//! A complete event-stream parser, for shared streams: splits the upstream's
//! bytes into whole events and reads the `id` and `retry` fields the hub needs
//! for replay and reconnection. Lines may end in LF, CR or CRLF, split
//! anywhere across chunks (HTML standard, "Parsing an event stream").

use bytes::{BufMut, Bytes, BytesMut};

use super::framing::split_lines;

/// One dispatched block of the stream, re-serialised with LF line endings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The event's lines, comments removed, each ending in LF, then a blank line.
    pub raw: Bytes,
    /// The `id` field, if the event set one (an empty value resets the id).
    pub id: Option<String>,
    /// The `retry` field in milliseconds, if present and valid.
    pub retry: Option<u64>,
    /// Whether the event carries `data` and so reaches EventSource listeners.
    pub has_data: bool,
}

#[derive(Debug, Default)]
pub struct EventParser {
    line: Vec<u8>,
    after_cr: bool,
    event: BytesMut,
    id: Option<String>,
    retry: Option<u64>,
    has_data: bool,
    /// A UTF-8 byte order mark is skipped at the very start of the stream.
    started: bool,
}

impl EventParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk; returns the events it completed.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<ParsedEvent> {
        if !self.started && !chunk.is_empty() {
            self.started = true;
            chunk = chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk);
        }
        let mut events = Vec::new();
        // `end_line` needs all of `self`, so the CR carry-over is lent out.
        let mut after_cr = self.after_cr;
        split_lines(&mut after_cr, chunk, |line, ended| {
            self.line.extend_from_slice(line);
            if ended {
                events.extend(self.end_line());
            }
        });
        self.after_cr = after_cr;
        events
    }

    /// Handles a complete line; a blank line dispatches the pending event.
    fn end_line(&mut self) -> Option<ParsedEvent> {
        if self.line.is_empty() {
            if self.event.is_empty() {
                return None;
            }
            self.event.put_u8(b'\n');
            return Some(ParsedEvent {
                raw: self.event.split().freeze(),
                id: self.id.take(),
                retry: self.retry.take(),
                has_data: std::mem::take(&mut self.has_data),
            });
        }
        let line = std::mem::take(&mut self.line);
        if line[0] == b':' {
            return None; // comment: the proxy writes its own heartbeats
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        match field {
            b"data" => self.has_data = true,
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned())
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
        self.event.put_slice(&line);
        self.event.put_u8(b'\n');
        self.line = line;
        self.line.clear();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<ParsedEvent> {
        let mut parser = EventParser::new();
        chunks.iter().flat_map(|c| parser.feed(c)).collect()
    }

    #[test]
    fn express_style_writes_make_whole_events() {
        let events = parse_all(&[
            b"retry: 3000\n\n",
            b"id: 7\n",
            b"event: date\n",
            b"data: a\n",
            b"data: b\n",
            b"\n",
        ]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].retry, Some(3000));
        assert!(!events[0].has_data);
        assert_eq!(events[1].id.as_deref(), Some("7"));
        assert!(events[1].has_data);
        assert_eq!(
            &events[1].raw[..],
            b"id: 7\nevent: date\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn crlf_and_cr_endings_split_anywhere_are_normalised() {
        let stream: &[u8] = b"id: 1\r\ndata: x\r\n\r\nid: 2\rdata: y\r\r";
        for split in 0..=stream.len() {
            let events = parse_all(&[&stream[..split], &stream[split..]]);
            assert_eq!(events.len(), 2, "split at {split}");
            assert_eq!(&events[0].raw[..], b"id: 1\ndata: x\n\n");
            assert_eq!(&events[1].raw[..], b"id: 2\ndata: y\n\n");
        }
    }

    #[test]
    fn comments_are_dropped_and_comment_only_blocks_dispatch_nothing() {
        let events = parse_all(&[b": keep-alive\n\n:x\ndata: z\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(&events[0].raw[..], b"data: z\n\n");
    }

    #[test]
    fn invalid_retry_and_bom_are_handled() {
        let events = parse_all(&[b"\xEF\xBB\xBFretry: 12a\ndata\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].retry, None);
        assert!(events[0].has_data);
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        assert!(parse_all(&[b"id: 1\ndata: half"]).is_empty());
        assert!(parse_all(&[b"id: 1\ndata: half\n"]).is_empty());
    }
}
