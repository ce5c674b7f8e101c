//! Reading what a daemon's `/metrics` endpoint answers (OpenMetrics text).

use std::collections::BTreeMap;

/// The value of the series `name` whose labels include `labels`, in an
/// OpenMetrics text (`None`: no such series).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, v) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: BTreeMap<&str, &str> = rest
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        labels
            .iter()
            .all(|(k, want)| have.get(k) == Some(want))
            .then(|| v.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_series_by_name_and_label_subset() {
        let text = "# TYPE nubo_x gauge\nnubo_x{node=\"a\",check=\"dhcp\"} 1\nnubo_x{node=\"b\",check=\"dhcp\"} 0\nnubo_y 2.5\nnubo_x_total{node=\"a\"} 7\n";
        assert_eq!(value(text, "nubo_x", &[("node", "b")]), Some(0.0));
        assert_eq!(
            value(text, "nubo_x", &[("check", "dhcp"), ("node", "a")]),
            Some(1.0)
        );
        assert_eq!(value(text, "nubo_y", &[]), Some(2.5));
        assert_eq!(value(text, "nubo_x_total", &[("node", "a")]), Some(7.0));
        assert_eq!(value(text, "nubo_x", &[("node", "c")]), None);
        assert_eq!(value(text, "nubo_z", &[]), None);
    }
}
