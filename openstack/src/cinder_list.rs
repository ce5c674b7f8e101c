//! Cinder's list parameters, applied to the JSON views of a list: filters
//! (exact values, `metadata` as a subset), `sort` / `sort_key` +
//! `sort_dir` (default `created_at:desc`, ties by id), `marker` (an
//! unknown one is 404, as Cinder's `MarkerNotFound`), `offset` and `limit`
//! (not a non-negative integer: 400), and the `<resource>_links` next link
//! Cinder adds when a page is full. An unknown parameter is a 400, as
//! Cinder's "Invalid filters" (never a silently unfiltered list).

use std::cmp::Ordering;

use serde_json::{json, Map, Value};

use crate::error::{ApiError, Service};

const S: Service = Service::Compute;

/// What one list request asks for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ListQuery {
    /// Most items (None: all).
    pub limit: Option<usize>,
    /// Items skipped after the marker.
    pub offset: usize,
    /// Items after this id.
    pub marker: Option<String>,
    /// (view key, ascending), most significant first.
    pub sort: Vec<(String, bool)>,
    /// (view key, wanted value); `metadata` holds a JSON object.
    pub filters: Vec<(String, Value)>,
    /// Whose items: `all_tenants` (every project's) and `project_id` (one
    /// project's), which the coordinator honours for cloud admins only
    /// (a member's `all_tenants` lists its own, as Cinder ignores it).
    pub projects: Projects,
    /// The parameters as given (for the next link).
    raw: Vec<(String, String)>,
}

/// Whose items a list asks for.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum Projects {
    /// The caller's project.
    #[default]
    Own,
    /// Every project (`all_tenants`).
    All,
    /// One project (`project_id`).
    One(String),
}

impl Projects {
    /// The gRPC list request of this scope (first page).
    pub fn request(&self) -> nubo_common::proto::ListRequest {
        let mut r = nubo_common::proto::ListRequest::default();
        match self {
            Projects::Own => {}
            Projects::All => r.all_projects = true,
            Projects::One(p) => r.project = p.clone(),
        }
        r
    }
}

/// What a resource's list accepts.
#[derive(Debug, Clone, Copy)]
pub struct Accepts {
    /// Sort keys (as requested; `display_name` means `name`).
    pub sort_keys: &'static [&'static str],
    /// Filter parameters (view keys; `display_name` means `name`).
    pub filters: &'static [&'static str],
}

/// A metadata filter value: JSON, or the Python dict repr Tempest's
/// client sends (`{'k': 'v'}`), as Cinder's `ast.literal_eval`. Pure.
fn metadata_filter(s: &str) -> Result<Value, ApiError> {
    serde_json::from_str::<Map<String, Value>>(s)
        .or_else(|_| serde_json::from_str::<Map<String, Value>>(&s.replace('\'', "\"")))
        .map(Value::Object)
        .map_err(|_| {
            ApiError::bad_request(
                S,
                format!("Invalid input received: metadata filter {s:?} is not a JSON object"),
            )
        })
}

fn view_key(k: &str) -> &str {
    match k {
        "display_name" => "name",
        "display_description" => "description",
        k => k,
    }
}

/// Parses the query of a list. Pure.
pub fn parse(raw: Vec<(String, String)>, accepts: Accepts) -> Result<ListQuery, ApiError> {
    let bad = |m: String| ApiError::bad_request(S, format!("Invalid input received: {m}"));
    let int = |k: &str, v: &str| -> Result<usize, ApiError> {
        v.trim()
            .parse::<usize>()
            .map_err(|_| bad(format!("{k} param must be an integer >= 0 (got {v:?})")))
    };
    let mut q = ListQuery {
        raw: raw.clone(),
        ..Default::default()
    };
    let (mut sort_key, mut sort_dir) = (None, None);
    let (mut all_tenants, mut project_id) = (false, None);
    for (k, v) in &raw {
        match k.as_str() {
            "limit" => q.limit = Some(int(k, v)?),
            "offset" => q.offset = int(k, v)?,
            "marker" => q.marker = Some(v.clone()),
            "sort" => {
                for part in v.split(',').filter(|p| !p.trim().is_empty()) {
                    let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
                    q.sort.push((key.trim().to_string(), dir_asc(dir.trim())?));
                }
            }
            "sort_key" => sort_key = Some(v.clone()),
            // Clients send it (false: the caller's own project).
            "all_tenants" if matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "") => {}
            "all_tenants" => all_tenants = true,
            "project_id" | "tenant_id" if !v.trim().is_empty() => project_id = Some(v.clone()),
            "sort_dir" => sort_dir = Some(dir_asc(v)?),
            "metadata" if accepts.filters.contains(&"metadata") => {
                q.filters.push(("metadata".into(), metadata_filter(v)?))
            }
            k if accepts.filters.contains(&k) => {
                q.filters
                    .push((view_key(k).to_string(), Value::String(v.clone())));
            }
            k => {
                return Err(bad(format!(
                    "Invalid filters {k} are found in query options (supported: {})",
                    accepts.filters.join(", ")
                )))
            }
        }
    }
    q.projects = match (all_tenants, project_id) {
        (_, Some(p)) => Projects::One(p),
        (true, None) => Projects::All,
        (false, None) => Projects::Own,
    };
    if !q.sort.is_empty() && (sort_key.is_some() || sort_dir.is_some()) {
        return Err(bad(
            "the 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'".into(),
        ));
    }
    if let Some(k) = sort_key {
        q.sort.push((k, sort_dir.unwrap_or(false)));
    } else if let Some(asc) = sort_dir {
        q.sort.push(("created_at".into(), asc));
    }
    for (k, _) in &mut q.sort {
        if !accepts.sort_keys.contains(&k.as_str()) {
            return Err(bad(format!(
                "Invalid sort key {k:?} (supported: {})",
                accepts.sort_keys.join(", ")
            )));
        }
        *k = view_key(k).to_string();
    }
    if q.sort.is_empty() {
        q.sort.push(("created_at".into(), false));
    }
    Ok(q)
}

fn dir_asc(d: &str) -> Result<bool, ApiError> {
    match d.to_ascii_lowercase().as_str() {
        "asc" => Ok(true),
        "desc" => Ok(false),
        _ => Err(ApiError::bad_request(
            S,
            format!("Invalid input received: sort direction {d:?} is not 'asc' or 'desc'"),
        )),
    }
}

/// Orders two JSON values of one key (numbers numerically, the rest as
/// text; null first). Pure.
fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// Whether view `v` passes filter (`key`, `want`). Pure.
fn matches(v: &Value, key: &str, want: &Value) -> bool {
    match (key, want) {
        ("metadata", Value::Object(m)) => m.iter().all(|(k, x)| {
            let have = &v["metadata"][k];
            have == x || (x.as_str().is_some() && have.as_str() == x.as_str())
        }),
        (_, Value::String(w)) => match &v[key] {
            Value::String(h) => h.eq_ignore_ascii_case(w) && (key != "name" || h == w),
            Value::Bool(b) => b.to_string().eq_ignore_ascii_case(w),
            Value::Number(n) => n.to_string() == *w,
            _ => false,
        },
        _ => false,
    }
}

/// Filters, sorts and pages `views` (each with a string `id`). Pure.
pub fn apply(views: Vec<Value>, q: &ListQuery) -> Result<Vec<Value>, ApiError> {
    let mut items: Vec<Value> = views
        .into_iter()
        .filter(|v| q.filters.iter().all(|(k, w)| matches(v, k, w)))
        .collect();
    let last_asc = q.sort.last().map(|(_, a)| *a).unwrap_or(false);
    items.sort_by(|a, b| {
        q.sort
            .iter()
            .map(|(k, asc)| {
                let o = cmp_values(a.get(k), b.get(k));
                if *asc {
                    o
                } else {
                    o.reverse()
                }
            })
            .chain(std::iter::once({
                let o = cmp_values(a.get("id"), b.get("id"));
                if last_asc {
                    o
                } else {
                    o.reverse()
                }
            }))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    });
    let start = match &q.marker {
        None => 0,
        Some(m) => {
            items
                .iter()
                .position(|v| v["id"].as_str() == Some(m.as_str()))
                .ok_or_else(|| ApiError::not_found(S, format!("Marker {m} could not be found.")))?
                + 1
        }
    };
    Ok(items
        .into_iter()
        .skip(start.saturating_add(q.offset))
        .take(q.limit.unwrap_or(usize::MAX))
        .collect())
}

/// The `<resource>_links` of a page: a next link (the same query with
/// `marker` = the page's last id) when the page is full. Pure.
pub fn links(url: &str, q: &ListQuery, page: &[Value]) -> Option<Value> {
    let limit = q.limit?;
    if limit == 0 || page.len() < limit {
        return None;
    }
    let last = page.last()?["id"].as_str()?.to_string();
    let mut params: Vec<(String, String)> = q
        .raw
        .iter()
        .filter(|(k, _)| k != "marker" && k != "offset")
        .cloned()
        .collect();
    params.push(("marker".into(), last));
    let query = serde_urlencoded::to_string(&params).ok()?;
    Some(json!([{"rel": "next", "href": format!("{url}?{query}")}]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Accepts = Accepts {
        sort_keys: &["id", "name", "display_name", "created_at", "size"],
        filters: &["name", "status", "metadata", "bootable"],
    };

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        parse(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            A,
        )
    }

    fn views() -> Vec<Value> {
        (1..=4)
            .map(|i| {
                json!({"id": format!("id{i}"), "name": format!("n{}", 5 - i),
                "created_at": format!("2026-01-0{i}T00:00:00Z"), "size": i,
                "status": "available", "bootable": if i == 2 { "true" } else { "false" },
                "metadata": if i % 2 == 0 { json!({"Type": "work"}) } else { json!({}) }})
            })
            .collect()
    }

    fn ids(v: &[Value]) -> Vec<&str> {
        v.iter().filter_map(|x| x["id"].as_str()).collect()
    }

    #[test]
    fn default_order_is_newest_first_and_sort_keys_apply() {
        let all = apply(views(), &q(&[]).unwrap()).unwrap();
        assert_eq!(ids(&all), ["id4", "id3", "id2", "id1"]);
        let by_name = apply(
            views(),
            &q(&[("sort_key", "display_name"), ("sort_dir", "asc")]).unwrap(),
        )
        .unwrap();
        assert_eq!(ids(&by_name), ["id4", "id3", "id2", "id1"]);
        let by_size = apply(views(), &q(&[("sort", "size:asc")]).unwrap()).unwrap();
        assert_eq!(ids(&by_size), ["id1", "id2", "id3", "id4"]);
    }

    #[test]
    fn filters_marker_offset_and_limit() {
        let meta = apply(views(), &q(&[("metadata", "{'Type': 'work'}")]).unwrap()).unwrap();
        assert_eq!(ids(&meta), ["id4", "id2"]);
        let boot = apply(views(), &q(&[("bootable", "true")]).unwrap()).unwrap();
        assert_eq!(ids(&boot), ["id2"]);
        let page = apply(views(), &q(&[("marker", "id4"), ("limit", "2")]).unwrap()).unwrap();
        assert_eq!(ids(&page), ["id3", "id2"]);
        let off = apply(views(), &q(&[("offset", "2"), ("limit", "3")]).unwrap()).unwrap();
        assert_eq!(ids(&off), ["id2", "id1"]);
        assert!(apply(views(), &q(&[("limit", "0")]).unwrap())
            .unwrap()
            .is_empty());
        let e = apply(views(), &q(&[("marker", "nope")]).unwrap()).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn bad_parameters_are_400() {
        for bad in [
            ("limit", "invalid"),
            ("limit", "-1"),
            ("sort_key", "invalid"),
            ("sort_dir", "up"),
            ("sort", "id:sideways"),
            ("bogus", "1"),
            ("metadata", "not a dict"),
        ] {
            let e = q(&[bad]).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(q(&[("limit", "5"), ("sort_key", "id"), ("all_tenants", "0")]).is_ok());
        assert_eq!(q(&[("all_tenants", "1")]).unwrap().projects, Projects::All);
        assert_eq!(
            q(&[("all_tenants", "1"), ("project_id", "p2")])
                .unwrap()
                .projects,
            Projects::One("p2".into())
        );
        assert_eq!(q(&[("all_tenants", "0")]).unwrap().projects, Projects::Own);
    }

    #[test]
    fn a_full_page_links_to_the_next() {
        let query = q(&[("limit", "2"), ("sort", "id:asc")]).unwrap();
        let page = apply(views(), &query).unwrap();
        let l = links("https://x/volume/v3/p/volumes/detail", &query, &page).unwrap();
        assert_eq!(
            l[0]["href"],
            "https://x/volume/v3/p/volumes/detail?limit=2&sort=id%3Aasc&marker=id2"
        );
        let short = apply(views(), &q(&[("limit", "9")]).unwrap()).unwrap();
        assert!(links("u", &q(&[("limit", "9")]).unwrap(), &short).is_none());
        assert!(links("u", &q(&[]).unwrap(), &short).is_none());
    }
}
