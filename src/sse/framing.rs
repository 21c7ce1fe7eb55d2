//! Event boundaries in an event stream, tracked across chunks.
//!
//! Per the HTML standard's event-stream parsing rules, lines end with CRLF, LF
//! or CR, and a blank line dispatches the event. The tracker only observes the
//! relayed bytes; it never copies or holds them back.

/// Whether the bytes relayed so far end between events, where the proxy may
/// insert a comment or end the stream without splitting an event.
#[derive(Debug, Clone, Default)]
pub struct EventBoundary {
    /// Bytes seen on the current, unfinished line.
    line_has_bytes: bool,
    /// A field line has ended but no blank line has dispatched its event yet.
    event_pending: bool,
    /// The previous byte was CR: a following LF belongs to the same line end.
    after_cr: bool,
    /// The current line starts with `:` (a comment, such as a heartbeat).
    line_is_comment: bool,
    /// The pending event has a field line, not only comments: it counts
    /// as an event when a blank line dispatches it.
    event_has_field: bool,
}

impl EventBoundary {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the stream sits between events: no partial line, no
    /// undispatched field lines.
    pub fn at_boundary(&self) -> bool {
        !self.line_has_bytes && !self.event_pending
    }

    /// Observes the next relayed bytes; returns how many events they
    /// completed: blocks ended by a blank line that hold at least one
    /// field line (a block of comments only, such as a heartbeat, is none).
    pub fn feed(&mut self, bytes: &[u8]) -> u64 {
        let mut events = 0;
        split_lines(&mut self.after_cr, bytes, |line, ended| {
            if let (false, Some(&first)) = (self.line_has_bytes, line.first()) {
                self.line_is_comment = first == b':';
            }
            self.line_has_bytes |= !line.is_empty();
            if ended {
                if self.line_has_bytes {
                    self.event_has_field |= !self.line_is_comment;
                } else if std::mem::take(&mut self.event_has_field) {
                    events += 1;
                }
                // A non-empty line adds to the pending event, an empty one
                // dispatches it.
                self.event_pending = self.line_has_bytes;
                self.line_has_bytes = false;
            }
        });
        events
    }
}

/// Splits `bytes` at line ends (CRLF, LF or CR), calling `piece` with each
/// run of line bytes and whether a line end follows it. `after_cr` carries
/// a CR at the end of one chunk over to the next, so that a CRLF split
/// across chunks is one line end. Line by line (memchr), not byte by byte:
/// this runs over every byte an event stream relays.
pub(super) fn split_lines(
    after_cr: &mut bool,
    mut bytes: &[u8],
    mut piece: impl FnMut(&[u8], bool),
) {
    while !bytes.is_empty() {
        if std::mem::take(after_cr) && bytes[0] == b'\n' {
            bytes = &bytes[1..]; // the LF of a CRLF pair
            continue;
        }
        let Some(end) = memchr::memchr2(b'\r', b'\n', bytes) else {
            piece(bytes, false);
            return;
        };
        *after_cr = bytes[end] == b'\r';
        piece(&bytes[..end], true);
        bytes = &bytes[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boundary_after(chunks: &[&[u8]]) -> bool {
        let mut tracker = EventBoundary::new();
        for chunk in chunks {
            tracker.feed(chunk);
        }
        tracker.at_boundary()
    }

    #[test]
    fn a_fresh_stream_is_at_a_boundary() {
        assert!(EventBoundary::new().at_boundary());
    }

    #[test]
    fn blank_line_ends_an_event_with_any_line_ending() {
        assert!(boundary_after(&[b"data: a\n\n"]));
        assert!(boundary_after(&[b"data: a\r\n\r\n"]));
        assert!(boundary_after(&[b"data: a\r\r"]));
        assert!(boundary_after(&[b"id: 1\nevent: x\ndata: a\ndata: b\n\n"]));
        assert!(boundary_after(&[b"retry: 3000\n\n"]));
    }

    #[test]
    fn inside_an_event_is_not_a_boundary() {
        assert!(!boundary_after(&[b"data: a"]));
        assert!(!boundary_after(&[b"data: a\n"]));
        assert!(!boundary_after(&[b"data: a\r\n"]));
        assert!(!boundary_after(&[b"id: 1\ndata: a\n\ndata: b\n"]));
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        // "data: a\r" | "\n" | "\r\n": the LF after CR must not count as a blank line.
        assert!(!boundary_after(&[b"data: a\r", b"\n"]));
        assert!(boundary_after(&[b"data: a\r", b"\n", b"\r", b"\n"]));
        assert!(boundary_after(&[b"data: a\r", b"\n\r\n"]));
    }

    /// The rules one byte at a time, as the standard states them.
    fn byte_by_byte(bytes: &[u8]) -> bool {
        let (mut line_has_bytes, mut event_pending, mut after_cr) = (false, false, false);
        for &b in bytes {
            if std::mem::take(&mut after_cr) && b == b'\n' {
                continue;
            }
            if b == b'\r' || b == b'\n' {
                event_pending = line_has_bytes;
                line_has_bytes = false;
                after_cr = b == b'\r';
            } else {
                line_has_bytes = true;
            }
        }
        !line_has_bytes && !event_pending
    }

    #[test]
    fn line_by_line_scanning_agrees_with_the_byte_by_byte_rules() {
        let stream: &[u8] = b"\r\n\ndata: a\r\r\n\nid: 1\r\n\r\rx\n\ry\r\n\n\n: c\r\ndata\n\r\n";
        for end in 0..=stream.len() {
            for split in 0..=end {
                assert_eq!(
                    boundary_after(&[&stream[..split], &stream[split..end]]),
                    byte_by_byte(&stream[..end]),
                    "prefix {end} split at {split}"
                );
            }
        }
    }

    fn events_in(chunks: &[&[u8]]) -> u64 {
        let mut tracker = EventBoundary::new();
        chunks.iter().map(|chunk| tracker.feed(chunk)).sum()
    }

    #[test]
    fn events_are_counted_once_each_and_comments_are_not_events() {
        assert_eq!(events_in(&[b"data: a\n\n"]), 1);
        assert_eq!(events_in(&[b"id: 1\nevent: x\ndata: a\ndata: b\n\n"]), 1);
        assert_eq!(events_in(&[b"data: a\r\n\r\ndata: b\r\r"]), 2);
        assert_eq!(events_in(&[b":\n\n", b": keep-alive\n\n"]), 0);
        assert_eq!(events_in(&[b": note\ndata: a\n\n"]), 1);
        assert_eq!(events_in(&[b"data: a\n"]), 0, "not dispatched yet");
        assert_eq!(events_in(&[b"\n\n\n"]), 0);
        let stream: &[u8] =
            b"retry: 1000\n\nid: 1\r\nevent: date\r\ndata: x\r\n\r\n:\n\ndata: z\r\rdata: w\n";
        for split in 0..=stream.len() {
            for second in split..=stream.len() {
                let chunks = [&stream[..split], &stream[split..second], &stream[second..]];
                assert_eq!(events_in(&chunks), 3, "split at {split} and {second}");
            }
        }
    }

    #[test]
    fn every_split_point_agrees_with_the_whole() {
        let stream: &[u8] = b"retry: 1000\n\nid: 1\r\nevent: date\r\ndata: x\r\ndata: y\r\n\r\n: comment\n\ndata: z\r\rdata: w\n";
        for end in 0..=stream.len() {
            let whole = boundary_after(&[&stream[..end]]);
            for split in 0..=end {
                assert_eq!(
                    boundary_after(&[&stream[..split], &stream[split..end]]),
                    whole,
                    "prefix {end} split at {split}"
                );
            }
        }
    }
}
