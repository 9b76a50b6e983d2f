//! Large outputs in the object store `mesh_objects`. A capability whose
//! output is large (a screenshot, a page dump, an archive) stores the bytes
//! here and puts an [`ObjectRef`] in its result: bucket, key, size, SHA-256
//! and media type. Results stay small (a multi-megabyte base64 string never
//! goes into KV), and anyone can fetch the bytes with the reference and
//! check them against its digest (`jetmesh obj get <key>`).

use crate::error::{Error, ErrorCode, Result};
use crate::mesh::Mesh;
use crate::wire::ObjectRef;
use async_nats::jetstream::object_store::{self, ObjectMetadata};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tokio::io::AsyncReadExt;

/// The metadata key holding the media type.
const CONTENT_TYPE: &str = "content_type";
/// The metadata key holding the hex SHA-256.
const SHA256: &str = "sha256";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores `bytes` under `key` and returns the reference. Errors:
/// `payload_too_large` above `mesh.max_object_bytes`, `unavailable` when the
/// store cannot take it.
pub async fn put(mesh: &Mesh, key: &str, content_type: &str, bytes: &[u8]) -> Result<ObjectRef> {
    let limit = mesh.config.mesh.max_object_bytes;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "an output of {} bytes is larger than mesh.max_object_bytes ({limit})",
                bytes.len()
            ),
        ));
    }
    let sha256 = sha256_hex(bytes);
    let meta = ObjectMetadata {
        name: key.to_string(),
        metadata: HashMap::from([
            (CONTENT_TYPE.to_string(), content_type.to_string()),
            (SHA256.to_string(), sha256.clone()),
        ]),
        ..Default::default()
    };
    let mut reader = bytes;
    mesh.objects
        .put(meta, &mut reader)
        .await
        .map_err(|e| Error::unavailable(&format!("cannot store object {key}"), e))?;
    Ok(ObjectRef {
        bucket: mesh.names.objects_bucket(),
        key: key.to_string(),
        size: bytes.len() as u64,
        sha256,
        content_type: Some(content_type.to_string()),
    })
}

/// Fetches `key`, checked against the SHA-256 it was stored with. Errors:
/// `not_found`, `bad_result` when the bytes do not match their digest,
/// `unavailable`.
pub async fn get(mesh: &Mesh, key: &str) -> Result<(ObjectRef, Vec<u8>)> {
    let mut object = mesh.objects.get(key).await.map_err(|e| {
        if e.kind() == object_store::GetErrorKind::NotFound {
            Error::new(
                ErrorCode::NotFound,
                format!("no object {key:?} in {}", mesh.names.objects_bucket()),
            )
        } else {
            Error::unavailable(&format!("cannot read object {key}"), e)
        }
    })?;
    let info = object.info().clone();
    let mut bytes = Vec::with_capacity(info.size);
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Error::unavailable(&format!("cannot read object {key}"), e))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(want) = info.metadata.get(SHA256)
        && *want != sha256
    {
        return Err(Error::new(
            ErrorCode::BadResult,
            format!("object {key}: its bytes do not match the SHA-256 it was stored with"),
        ));
    }
    Ok((
        ObjectRef {
            bucket: mesh.names.objects_bucket(),
            key: key.to_string(),
            size: bytes.len() as u64,
            sha256,
            content_type: info.metadata.get(CONTENT_TYPE).cloned(),
        },
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
