//! The drivers' own state files (what each driver created for which
//! instance): JSON, read at start, replaced atomically (write a temporary
//! file, rename) after every change.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::HypervisorError;

/// The [`HypervisorError::State`] of an I/O or JSON error on `path`.
pub fn state_err(path: &Path) -> impl Fn(std::io::Error) -> HypervisorError + '_ {
    move |source| HypervisorError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the state at `path`; an absent file is the default (empty) state.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, HypervisorError> {
    let err = state_err(path);
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(err(e)),
    }
}

/// Replaces the state at `path` with `state`: written to `<path>.json.tmp`
/// (the extension replaced), then renamed over `path`.
pub async fn save<T: Serialize>(path: &Path, state: &T) -> Result<(), HypervisorError> {
    let err = state_err(path);
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(e.into()))?;
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, bytes).await.map_err(&err)?;
    tokio::fs::rename(&tmp, path).await.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn absent_is_empty_saved_is_read_back_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let empty: BTreeMap<String, u32> = load(&path).unwrap();
        assert!(empty.is_empty());
        let st = BTreeMap::from([("a".to_string(), 1u32)]);
        save(&path, &st).await.unwrap();
        assert_eq!(load::<BTreeMap<String, u32>>(&path).unwrap(), st);
        assert!(!dir.path().join("state.json.tmp").exists());
        std::fs::write(&path, b"{").unwrap();
        let e = load::<BTreeMap<String, u32>>(&path).unwrap_err();
        assert!(matches!(e, HypervisorError::State { .. }), "{e}");
    }
}
