//! Byte-level lexing of header text, shared by the challenge and Link parsers.

pub(super) fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Byte cursor over header text. Every delimiter is ASCII, so slicing at them keeps UTF-8 valid.
pub(super) struct Cursor<'a> {
    pub(super) text: &'a str,
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    pub(super) fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    pub(super) fn take(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    pub(super) fn skip(&mut self, skip: impl Fn(u8) -> bool) {
        self.take(skip);
    }

    pub(super) fn token(&mut self) -> &'a str {
        self.take(is_tchar)
    }

    /// A quoted-string at the cursor, unescaped; an unterminated one runs to the end.
    pub(super) fn quoted(&mut self) -> String {
        self.eat(b'"');
        let mut value = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += offset + 1;
                    return value;
                }
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        self.pos = self.text.len();
        value
    }
}
