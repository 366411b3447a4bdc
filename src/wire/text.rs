//! Text from a guest is untrusted: a failure message, a tmux command name
//! or an error that quotes a guest's output may carry terminal control
//! sequences (to move the cursor, retitle the window, rewrite what the user
//! sees, or worse). [`printable`] strips them; the daemon applies it to what
//! it sends and the client to what it prints, everywhere but inside an
//! attached console, where the guest's output is the point.

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
}
