//! XML escaping of the values nubo puts into (and reads back from) libvirt
//! XML.

/// Escapes the five XML special characters (valid in text and in
/// single- or double-quoted attributes).
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`esc`] (and libvirt's numeric apostrophe).
pub(crate) fn unesc(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_all_specials() {
        assert_eq!(
            esc(r#"a<b>&'c'"d""#),
            "a&lt;b&gt;&amp;&apos;c&apos;&quot;d&quot;"
        );
    }
}
