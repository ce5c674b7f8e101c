//! Volume types (`/nubo/v1/volume-types/<name>`): global QoS classes. The
//! agents apply a type's QoS as libvirt `<iotune>` on every disk of that
//! type, so changing it here reaches disks already attached.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, Qos, Volume, VolumeType};
use nubo_common::proto::{self as pb, volume_types_server};
use tonic::{Request, Response, Status};

use super::volumes::TXN_RETRIES;
use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::validate;
use nubo_store::kv::{absent, decode_or_skip, prefix_unchanged_since, put, unchanged};

type R<T> = Result<Response<T>, Status>;

/// Applies the fields present in `p` to `q` (0 = unlimited).
fn apply_qos(q: &mut Qos, p: &pb::VolumeQos) {
    let set = |slot: &mut Option<u64>, v: Option<u64>| {
        if let Some(v) = v {
            *slot = (v > 0).then_some(v);
        }
    };
    set(&mut q.read_iops_sec, p.read_iops_sec);
    set(&mut q.write_iops_sec, p.write_iops_sec);
    set(&mut q.read_bytes_sec, p.read_bytes_sec);
    set(&mut q.write_bytes_sec, p.write_bytes_sec);
}

impl Ctx {
    async fn volume_type_get(&self, name: &str) -> ApiResult<nubo_store::Versioned<VolumeType>> {
        let name = name.trim();
        validate::name("volume type", name)?;
        self.store
            .read::<VolumeType>(&keys::volume_type(name))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("volume type {name:?} not found")))
    }

    async fn create_volume_type(
        &self,
        r: pb::CreateVolumeTypeRequest,
    ) -> ApiResult<pb::VolumeType> {
        validate::name("volume type", &r.name)?;
        let mut qos = Qos::default();
        if let Some(q) = &r.qos {
            apply_qos(&mut qos, q);
        }
        let t = VolumeType {
            name: r.name.clone(),
            qos,
            created_at: model::now(),
        };
        let key = keys::volume_type(&t.name);
        let resp = self
            .store
            .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &t)]))
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "volume type {:?} exists",
                t.name
            )));
        }
        tracing::info!(volume_type = %t.name, "volume type created");
        Ok(convert::volume_type(&t))
    }

    async fn set_volume_type_qos(
        &self,
        r: pb::SetVolumeTypeQosRequest,
    ) -> ApiResult<pb::VolumeType> {
        for _ in 0..TXN_RETRIES {
            let cur = self.volume_type_get(&r.name).await?;
            let mut t = cur.value.clone();
            if let Some(q) = &r.qos {
                apply_qos(&mut t.qos, q);
            }
            let key = keys::volume_type(&t.name);
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&key, cur.mod_rev)])
                        .and_then([put(&key, &t)]),
                )
                .await?;
            if resp.succeeded() {
                tracing::info!(volume_type = %t.name, qos = ?t.qos, "volume type QoS changed");
                return Ok(convert::volume_type(&t));
            }
        }
        Err(ApiError::Unavailable(
            "the volume type changed concurrently too often; retry".into(),
        ))
    }

    async fn delete_volume_type(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        for _ in 0..TXN_RETRIES {
            let cur = self.volume_type_get(&r.r#ref).await?;
            let name = cur.value.name.clone();
            // Which volumes use it, as of one revision; the delete compares
            // that no volume changed since, so a concurrent create of a
            // volume of this type either lands first (and is seen) or fails.
            let prefix = keys::volumes_prefix();
            let resp = self
                .store
                .get(
                    prefix.as_str(),
                    Some(etcd_client::GetOptions::new().with_prefix().with_limit(0)),
                )
                .await?;
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            let users: Vec<String> = resp
                .kvs()
                .iter()
                .filter_map(decode_or_skip::<Volume>)
                .filter(|v| v.volume_type.as_deref() == Some(name.as_str()))
                .map(|v| v.id.to_string())
                .collect();
            if !users.is_empty() {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume type {name:?} is used by {} volume(s), e.g. {}",
                    users.len(),
                    users[0]
                )));
            }
            let key = keys::volume_type(&name);
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([
                            unchanged(&key, cur.mod_rev),
                            prefix_unchanged_since(&prefix, rev),
                        ])
                        .and_then([TxnOp::delete(key.as_str(), None)]),
                )
                .await?;
            if resp.succeeded() {
                tracing::info!(volume_type = %name, "volume type deleted");
                return Ok(pb::Empty {});
            }
        }
        Err(ApiError::Unavailable(
            "volumes changed concurrently too often; retry".into(),
        ))
    }
}

#[tonic::async_trait]
impl volume_types_server::VolumeTypes for Ctx {
    async fn create(&self, r: Request<pb::CreateVolumeTypeRequest>) -> R<pb::VolumeType> {
        reply(self.create_volume_type(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::VolumeType> {
        let r = r.into_inner();
        reply(
            self.volume_type_get(&r.r#ref)
                .await
                .map(|t| convert::volume_type(&t.value)),
        )
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListVolumeTypesResponse> {
        let r = r.into_inner();
        reply(
            crate::paging::list_page(
                &self.store,
                &keys::volume_types_prefix(),
                r.page_size,
                &r.page_token,
                |kv| decode_or_skip::<VolumeType>(kv).map(|t| convert::volume_type(&t)),
            )
            .await
            .map(
                |(volume_types, next_page_token)| pb::ListVolumeTypesResponse {
                    volume_types,
                    next_page_token,
                },
            ),
        )
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_volume_type(r.into_inner()).await)
    }
    async fn set_qos(&self, r: Request<pb::SetVolumeTypeQosRequest>) -> R<pb::VolumeType> {
        reply(self.set_volume_type_qos(r.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_fields_present_are_set_and_zero_clears() {
        let mut q = Qos {
            read_iops_sec: Some(100),
            ..Qos::default()
        };
        apply_qos(
            &mut q,
            &pb::VolumeQos {
                write_iops_sec: Some(200),
                read_iops_sec: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(q.write_iops_sec, Some(200));
        assert_eq!(q.read_iops_sec, None);
        assert_eq!(q.read_bytes_sec, None);
    }
}
