//! Text that others control, made safe for a terminal: a guest's file names and console log,
//! error messages that carry a guest's words, names other users and agents chose. Control
//! characters in them could move the cursor, retitle the window, rewrite what was printed or,
//! on some terminals, answer back; so they are shown as escapes (`\x1b`, `\r`, `\u{9b}`).
//! `--raw` prints the exact bytes instead. A command's own output (`sandbox exec`, `files get`)
//! is never touched: it is what the user asked for.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static RAW: AtomicBool = AtomicBool::new(false);

/// From now on, print others' text as it is (`--raw`).
pub fn set_raw(raw: bool) {
    RAW.store(raw, Ordering::Relaxed);
}

pub fn is_raw() -> bool {
    RAW.load(Ordering::Relaxed)
}

/// One line (a file name, a table cell): every control character escaped, newlines and tabs
/// included.
pub fn line(s: &str) -> Cow<'_, str> {
    shown(s, false)
}

/// Text of many lines (a console log, an error message): line breaks (`\n`, `\r\n`) and tabs
/// kept, every other control character escaped.
pub fn text(s: &str) -> Cow<'_, str> {
    shown(s, true)
}

fn shown(s: &str, lines: bool) -> Cow<'_, str> {
    if is_raw() {
        return Cow::Borrowed(s);
    }
    escape(s, lines)
}

/// Characters a terminal acts on: C0 controls, DEL, C1 controls (U+0080–U+009F, which some
/// terminals read as ESC sequences), and the bidirectional overrides and isolates that make
/// text display in another order than it is.
fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with control characters escaped; with `lines`, `\n`, `\t` and the `\r` of `\r\n` kept.
pub fn escape(s: &str, lines: bool) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' if lines => out.push(c),
            '\r' if lines && chars.peek() == Some(&'\n') => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_control(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let evil = "a\x1b]0;pwned\x07\x1b[2Jb\rc\u{9b}31md\u{202e}txt.exe\x7f";
        let shown = escape(evil, false);
        assert_eq!(
            shown,
            "a\\x1b]0;pwned\\x07\\x1b[2Jb\\rc\\u{9b}31md\\u{202e}txt.exe\\x7f"
        );
        assert!(!shown.chars().any(|c| c.is_control()));
        // A name of one line stays one line; a log keeps its lines.
        assert_eq!(escape("x\ny\tz", false), "x\\ny\\tz");
        assert_eq!(escape("x\r\ny\tz\n", true), "x\r\ny\tz\n");
        assert_eq!(escape("progress 10%\rdone", true), "progress 10%\\rdone");
        // Plain text is not copied; other scripts pass.
        assert!(matches!(
            escape("héllo wörld ✓", false),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
