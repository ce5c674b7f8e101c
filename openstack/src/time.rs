//! Timestamps as the OpenStack services write them: nubo's gRPC API
//! answers RFC 3339 with an offset (`2026-12-05T11:06:43+00:00`), which
//! clients such as Tempest and keystoneauth refuse where the services use
//! their own UTC formats.

use chrono::{DateTime, SecondsFormat, Utc};

/// Keystone's token times (`expires_at`, `issued_at`):
/// `2026-12-05T11:06:43.000000Z`. An empty or unparsable input is kept as
/// it is (never a made-up time). Pure.
pub fn keystone(rfc3339: &str) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t
            .with_timezone(&Utc)
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

/// Nova's, Neutron's and Glance's resource times (`created`,
/// `updated_at`, …): `2026-12-05T11:06:43Z`. An empty or unparsable input
/// is kept as it is. Pure.
pub fn iso_utc(rfc3339: &str) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Secs, true),
        Err(_) => rfc3339.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_of_the_services() {
        assert_eq!(
            keystone("2026-12-05T11:06:43+00:00"),
            "2026-12-05T11:06:43.000000Z"
        );
        assert_eq!(
            keystone("2026-12-05T12:06:43.5+01:00"),
            "2026-12-05T11:06:43.500000Z"
        );
        assert_eq!(
            iso_utc("2026-12-05T11:06:43.123+00:00"),
            "2026-12-05T11:06:43Z"
        );
        assert_eq!(keystone(""), "");
        assert_eq!(iso_utc("not a time"), "not a time");
    }
}
