//! Writing JSON text by hand for the frames sent for every message (`ack`, `receipt`,
//! `message`): byte for byte what serde_json writes, without its serializer's per-field work.
//! Tests beside each frame hold the two equal.

/// Appends `s` as a JSON string, as serde_json writes it: as it is when nothing in it needs an
/// escape (ids never do: see `wsroute_core::ids`), else through serde_json.
pub fn push_str(out: &mut String, s: &str) {
    if is_plain(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string always serializes"));
    }
}

/// Whether `s` stands in a JSON string as it is, both ways: serde_json writes it without escapes,
/// and a JSON string with exactly these bytes between its quotes reads back as `s`.
pub fn is_plain(s: &str) -> bool {
    s.bytes().all(|b| PLAIN[usize::from(b)])
}

/// Bytes serde_json writes as they are inside a string: everything but control characters, `"`
/// and `\` (bytes of multi-byte characters included). One load per byte, not three compares.
const PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = false;
        b += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

/// Appends `s` as a JSON string, or `null`.
pub fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// A JSON object written field by field: `{"type":KIND` first, then each field in the order
/// given. Keys are the frames' own names (plain words, written as they are).
pub struct Object(String);

impl Object {
    /// An object of `type` `kind`, with room for `capacity` bytes.
    pub fn new(kind: &str, capacity: usize) -> Self {
        let mut out = String::with_capacity(capacity);
        out.push_str(r#"{"type":"#);
        push_str(&mut out, kind);
        Self(out)
    }

    fn key(&mut self, key: &str) {
        self.0.push_str(",\"");
        self.0.push_str(key);
        self.0.push_str("\":");
    }

    /// A string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_str(&mut self.0, value);
        self
    }

    /// A string field, or `null`.
    pub fn opt(mut self, key: &str, value: Option<&str>) -> Self {
        self.key(key);
        push_opt(&mut self.0, value);
        self
    }

    /// A number field.
    pub fn num(mut self, key: &str, value: impl itoa::Integer) -> Self {
        self.key(key);
        self.0.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// A field whose value is JSON text already (a message's body, checked when it came in).
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.0.push_str(json);
        self
    }

    /// The finished text.
    pub fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut all: Vec<String> = (0u8..=127).map(|b| char::from(b).to_string()).collect();
        all.extend(["", "plain", "é ☃ /", "a\"b\\c\u{1f}"].map(String::from));
        for s in &all {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).expect("json"), "{s:?}");
        }
        let mut out = String::new();
        push_opt(&mut out, None);
        assert_eq!(out, "null");
    }
}
