//! Image v2 (Glance) schemas (`/v2/schemas/…`: JSON schemas of the
//! documents nubo's Glance API accepts and answers) and `/v2/info/import`.
//! `/v2/info/stores` is not served: nubo has one store (the coordinators'
//! image store), like a Glance without multiple stores, which answers 404
//! there too.

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::{ApiError, Service};
use crate::Upstream;

const S: Service = Service::Image;

/// `/image/v2/schemas/…`, `/image/v2/info/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/v2/schemas/{name}", get(schema))
        .route("/v2/schemas/metadefs/{name}", get(metadefs_schema))
        .route("/v2/info/import", get(info_import))
}

/// The schema of one image as nubo answers and accepts it. Pure.
pub fn image_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    let ro = |d: &str| json!({"type": "string", "readOnly": true, "description": d});
    json!({
        "name": "image",
        "properties": {
            "id": {"type": "string", "readOnly": true, "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$", "description": "An identifier for the image (chosen by nubo)"},
            "name": {"type": ["null", "string"], "maxLength": 255, "description": "Name of the image (required by nubo, unique in its project)"},
            "status": {"type": "string", "readOnly": true, "enum": ["queued", "active", "error", "deactivated"], "description": "Status of the image"},
            "visibility": {"type": "string", "enum": ["public", "private", "shared", "community"], "description": "Scope of image accessibility (public: cloud admins only)"},
            "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
            "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
            "owner": ro("Owner of the image (its nubo project)"),
            "disk_format": {"type": ["null", "string"], "enum": [null, "raw", "qcow2"], "description": "Format of the disk"},
            "container_format": {"type": ["null", "string"], "enum": [null, "bare"], "description": "Format of the container"},
            "size": {"type": ["null", "integer"], "readOnly": true, "description": "Size of image file in bytes"},
            "virtual_size": {"type": ["null", "integer"], "readOnly": true, "description": "Virtual size of image in bytes (not computed by nubo)"},
            "checksum": {"type": ["null", "string"], "readOnly": true, "description": "md5 hash of image contents (nubo records sha256 only)"},
            "os_hash_algo": {"type": ["null", "string"], "readOnly": true, "description": "Algorithm to calculate the os_hash_value (sha256)"},
            "os_hash_value": {"type": ["null", "string"], "readOnly": true, "description": "Hexdigest of the image contents"},
            "min_ram": {"type": "integer", "minimum": 0, "description": "Amount of ram (in MB) required to boot image."},
            "min_disk": {"type": "integer", "minimum": 0, "description": "Amount of disk space (in GB) required to boot image."},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "description": "List of strings related to the image"},
            "created_at": ro("Date and time of image registration"),
            "updated_at": ro("Date and time of the last image modification"),
            "self": ro("An image self url"),
            "file": ro("An image file url"),
            "schema": ro("An image schema url"),
            "direct_url": ro("URL to access the image file kept in external store"),
            "kernel_id": s("ID of image stored in Glance that should be used as the kernel when booting an AMI-style image (a free property in nubo)"),
            "ramdisk_id": s("ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image (a free property in nubo)"),
        },
        "additionalProperties": {"type": "string", "maxLength": 65535},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"}
        ]
    })
}

/// The schema of one image member. Pure.
pub fn member_schema() -> Value {
    json!({
        "name": "member",
        "properties": {
            "image_id": {"type": "string", "description": "An identifier for the image"},
            "member_id": {"type": "string", "description": "An identifier for the image member (a nubo project)"},
            "status": {"type": "string", "enum": ["pending", "accepted", "rejected"], "description": "The status of this image member"},
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
            "schema": {"type": "string", "readOnly": true}
        }
    })
}

/// A list schema around `item`. Pure.
fn collection(name: &str, item: Value, paged: bool) -> Value {
    let mut props = json!({
        name: {"type": "array", "items": item},
        "schema": {"type": "string"},
    });
    let mut links = json!([{"rel": "describedby", "href": "{schema}"}]);
    if paged {
        props["first"] = json!({"type": "string"});
        props["next"] = json!({"type": "string"});
        links = json!([
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"}
        ]);
    }
    json!({"name": name, "properties": props, "links": links})
}

/// The metadefs schemas: Glance's documents of metadata definitions.
/// nubo keeps no metadata definitions catalog (`/v2/metadefs/…` is a
/// 404), so each says so in its description. Pure; `None` for a name
/// Glance has no schema for.
pub fn metadefs(name: &str) -> Option<Value> {
    let note = "nubo keeps no metadata definitions catalog: /v2/metadefs/ calls answer 404 (docs/openstack-compatibility.md)";
    let item = |n: &str, props: Value, required: &[&str]| json!({"name": n, "description": note, "properties": props, "required": required, "additionalProperties": false});
    let s = json!({"type": "string"});
    let namespace = || {
        item(
            "namespace",
            json!({"namespace": s, "display_name": s, "description": s, "visibility": {"type": "string", "enum": ["public", "private"]}, "protected": {"type": "boolean"}, "owner": s, "created_at": s, "updated_at": s, "schema": s, "self": s}),
            &["namespace"],
        )
    };
    let rta = || {
        item(
            "resource_type_association",
            json!({"name": s, "prefix": s, "properties_target": s, "created_at": s, "updated_at": s}),
            &["name"],
        )
    };
    let object = || {
        item(
            "object",
            json!({"name": s, "description": s, "required": {"type": "array", "items": s}, "properties": {"type": "object"}, "schema": s, "self": s, "created_at": s, "updated_at": s}),
            &["name"],
        )
    };
    let property = || {
        item(
            "property",
            json!({"name": s, "title": s, "description": s, "type": {"type": "string", "enum": ["array", "boolean", "integer", "number", "object", "string"]}, "default": {}, "readonly": {"type": "boolean"}}),
            &["name", "title", "type"],
        )
    };
    let tag = || {
        item(
            "tag",
            json!({"name": s, "created_at": s, "updated_at": s}),
            &["name"],
        )
    };
    Some(match name {
        "namespace" => namespace(),
        "namespaces" => collection("namespaces", namespace(), true),
        "resource_type" => rta(),
        "resource_types" => collection("resource_type_associations", rta(), false),
        "object" => object(),
        "objects" => collection("objects", object(), true),
        "property" => property(),
        "properties" => {
            json!({"name": "properties", "description": note, "properties": {"properties": {"type": "object", "additionalProperties": property()}}})
        }
        "tag" => tag(),
        "tags" => collection("tags", tag(), false),
        _ => return None,
    })
}

/// `GET /v2/schemas/{image,images,member,members}`.
async fn schema(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(match name.as_str() {
        "image" => image_schema(),
        "images" => collection("images", image_schema(), true),
        "member" => member_schema(),
        "members" => collection("members", member_schema(), false),
        other => {
            return Err(ApiError::not_found(
                S,
                format!(
                    "there is no schema {other:?} (image, images, member, members, metadefs/… are)"
                ),
            ))
        }
    }))
}

/// `GET /v2/schemas/metadefs/{name}`.
async fn metadefs_schema(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    metadefs(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(S, format!("there is no metadefs schema {name:?}")))
}

/// `GET /v2/info/import`: nubo supports none of Glance's interoperable
/// import methods (glance-direct, web-download, copy-image,
/// glance-download): image data is uploaded with `PUT /v2/images/{id}/file`.
async fn info_import() -> Json<Value> {
    Json(json!({
        "import-methods": {
            "description": "Import methods available (nubo: none; upload with PUT /v2/images/{id}/file).",
            "type": "array",
            "value": []
        }
    }))
}
