//! Volume sizes on the command line: `10G`, `10GiB`, `1T`, or plain GiB.

/// Parses a size into GiB: a whole number with an optional unit `G`/`GB`/
/// `GiB` (the default) or `T`/`TB`/`TiB`. Negative numbers parse (the API
/// refuses them with its own message); fractions and other units do not.
pub fn parse_size_gb(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
        .map_or(t.len(), |(i, _)| i);
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("size {s:?} must be a whole number of GiB, e.g. 10G"))?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "g" | "gb" | "gib" => 1,
        "t" | "tb" | "tib" => 1024,
        _ => return Err(format!("size {s:?}: unit must be G or T (GiB, TiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size_gb("10"), Ok(10));
        assert_eq!(parse_size_gb("10G"), Ok(10));
        assert_eq!(parse_size_gb("10GiB"), Ok(10));
        assert_eq!(parse_size_gb("2T"), Ok(2048));
        assert_eq!(parse_size_gb("0"), Ok(0));
        assert_eq!(parse_size_gb("-5G"), Ok(-5));
        assert!(parse_size_gb("1.5G").is_err());
        assert!(parse_size_gb("10M").is_err());
        assert!(parse_size_gb("").is_err());
        assert!(parse_size_gb("G").is_err());
        assert!(parse_size_gb("99999999999999999999").is_err());
    }
}
