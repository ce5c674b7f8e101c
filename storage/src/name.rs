//! Names of pools, images and snapshots.

use crate::error::{Error, Result};

/// Pool, image and snapshot names: non-empty, no NUL, `/` or `@`.
pub(crate) fn validate_name(op: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 250 || name.contains(['/', '@', '\0']) {
        return Err(Error::invalid(
            op,
            name,
            "name must be 1..=250 bytes without '/', '@' or NUL",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_validation() {
        assert!(validate_name("x", "vm-1_disk").is_ok());
        for bad in ["", "a/b", "a@b", "a\0b"] {
            assert!(validate_name("x", bad).is_err(), "{bad:?}");
        }
    }
}
