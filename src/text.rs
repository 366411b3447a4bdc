//! Text that came from a guest (console logs, guest stderr inside error
//! messages, session commands) is untrusted: printed raw, it could move the
//! cursor, retitle the window or worse. [`visible`] shows ESC, DEL and
//! the other C0 controls as escapes (`\x1b`) and keeps `\n`, `\t`, `\r`.

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
    fn controls_become_visible() {
        assert_eq!(visible("a\x1b[2Jb\n\tc\r"), "a\\x1b[2Jb\n\tc\r");
        assert_eq!(visible("\x07\x00\x7f\u{9b}é"), "\\x07\\x00\\x7f\\u{9b}é");
    }
}
