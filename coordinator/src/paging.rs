//! Paging of list calls: page sizes and the opaque page tokens clients
//! pass back (the last key of the previous page, bound to the listed
//! prefix). The reads themselves are `nubo_store::Etcd::list_page`.

use base64::Engine;
use etcd_client::KeyValue;
use nubo_store::Etcd;

use crate::error::{ApiError, ApiResult};

/// Default and maximum page sizes of list calls.
pub const DEFAULT_PAGE: usize = 100;
/// See [`DEFAULT_PAGE`].
pub const MAX_PAGE: usize = 1000;

/// One page of the keys under `prefix`, in key order, starting after the
/// page token. `keep` decodes / filters each key-value (returning `None`
/// skips it). Returns the items and the next page token (empty at the
/// end). Never caps silently: when more keys follow, a token is returned.
pub async fn list_page<T>(
    etcd: &Etcd,
    prefix: &str,
    page_size: u32,
    page_token: &str,
    keep: impl FnMut(&KeyValue) -> Option<T>,
) -> ApiResult<(Vec<T>, String)> {
    let size = page_size_of(page_size)?;
    let after = decode_token(page_token, prefix)?;
    let (items, last) = etcd.list_page(prefix, after.as_deref(), size, keep).await?;
    Ok((items, last.map(|k| encode_token(&k)).unwrap_or_default()))
}

/// The page size of a request: 0 = default, larger than [`MAX_PAGE`] =
/// [`MAX_PAGE`] (the caller gets a `next_page_token` for the rest, so
/// nothing is capped silently).
pub fn page_size_of(n: u32) -> ApiResult<usize> {
    Ok(match n as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    })
}

/// Encodes a page token (opaque to clients).
pub fn encode_token(last_key: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_key)
}

/// Decodes a page token; it must belong to the listed prefix.
pub fn decode_token(token: &str, prefix: &str) -> ApiResult<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::InvalidArgument(
            "page_token is not valid for this list; start again without one".into(),
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    if !raw.starts_with(prefix.as_bytes()) {
        return Err(bad());
    }
    Ok(Some(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_prefix() {
        let t = encode_token(b"/nubo/v1/flavors/m1.small");
        assert_eq!(
            decode_token(&t, "/nubo/v1/flavors/").unwrap().unwrap(),
            b"/nubo/v1/flavors/m1.small".to_vec()
        );
        assert!(decode_token(&t, "/nubo/v1/ports/").is_err());
        assert!(decode_token("%%%", "/nubo/v1/ports/").is_err());
        assert_eq!(decode_token("", "/x/").unwrap(), None);
    }

    #[test]
    fn page_sizes_default_and_are_bounded() {
        assert_eq!(page_size_of(0).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_size_of(1000).unwrap(), 1000);
        assert_eq!(page_size_of(5000).unwrap(), MAX_PAGE);
    }
}
