//! Text from a guest is untrusted: a failure message, a tmux command name
//! or an error that quotes a guest's output may carry terminal control
//! sequences (to move the cursor, retitle the window, rewrite what the user
//! sees, or worse). [`printable`] strips them; the daemon applies it to what
//! it sends and the client to what it prints, everywhere but inside an
//! attached console, where the guest's output is the point. Where what the
//! guest wrote is the data itself (`fcm logs`, `fcm exec` output on a
//! terminal), [`visible`] keeps every byte in sight instead: controls are
//! shown as escapes (`\x1b`).

/// `s` without terminal control sequences: escape sequences (CSI, OSC,
/// DCS, APC, PM, SOS and two-byte ones) are dropped whole, other control
/// characters (C0 but newline and tab, DEL, C1) are dropped.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                // String sequences: until BEL or ST (ESC \).
                Some(']' | 'P' | '_' | '^' | 'X') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // Two-byte sequences (ESC c, ESC 7, ...): the byte is gone.
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `s` with every control character but `\n`, `\t`, `\r` shown as `\xNN`
/// (C1 controls, U+0080 to U+009F, as `\u{NN}`).
pub fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                out.push_str(&format!("\\u{{{:02x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_stripped() {
        assert_eq!(printable("plain text\n\tok"), "plain text\n\tok");
        assert_eq!(printable("\u{1b}[2J\u{1b}[1;1Hgone"), "gone");
        assert_eq!(printable("\u{1b}]0;pwned title\u{7}x"), "x");
        assert_eq!(printable("\u{1b}]52;c;Y2xpcA==\u{1b}\\y"), "y");
        assert_eq!(
            printable("a\u{1b}cb\rc\u{8}d\u{7f}e\u{9b}31mf"),
            "abcde31mf"
        );
        assert_eq!(printable("\u{1b}_fcm-ready\u{1b}\\z"), "z");
        assert_eq!(printable("trailing \u{1b}["), "trailing ");
        assert_eq!(printable("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn controls_become_visible() {
        assert_eq!(visible("a\x1b[2Jb\n\tc\r"), "a\\x1b[2Jb\n\tc\r");
        assert_eq!(visible("\x07\x00\x7f\u{9b}é"), "\\x07\\x00\\x7f\\u{9b}é");
    }
}
