//! The move of a first-layout blob index (`repo_len | repo | id` keys in
//! table `blobs`) to the id-first layout of `blobs-v2`, done at open.

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::StoreError;
use super::keys::{BLOBS, decode_key, index_err, malformed};

/// The first layout's blob index, keyed `repo_len | repo | id`; migrated at
/// open.
pub(super) const BLOBS_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");

/// Rewrites a first-layout key (`repo_len | repo | id`) as a blob key;
/// `None` if malformed.
pub(super) fn v1_key_to_v2(k: &[u8]) -> Option<Vec<u8>> {
    let (&len, rest) = k.split_first()?;
    if rest.len() != usize::from(len) + 32 {
        return None;
    }
    let (repo, id) = rest.split_at(usize::from(len));
    let mut out = Vec::with_capacity(k.len());
    out.extend_from_slice(id);
    out.push(len);
    out.extend_from_slice(repo);
    decode_key(&out)?;
    Some(out)
}

/// Moves a first-layout blob index, if any, into [`BLOBS`] and deletes it.
/// Returns how many entries moved, `None` if there was no such table.
pub(super) fn migrate_v1(txn: &WriteTransaction) -> Result<Option<u64>, StoreError> {
    let exists = txn
        .list_tables()
        .map_err(index_err)?
        .any(|t| t.name() == BLOBS_V1.name());
    if !exists {
        return Ok(None);
    }
    let mut moved = 0u64;
    {
        let old = txn.open_table(BLOBS_V1).map_err(index_err)?;
        let mut new = txn.open_table(BLOBS).map_err(index_err)?;
        for item in old.iter().map_err(index_err)? {
            let (k, v) = item.map_err(index_err)?;
            let key = v1_key_to_v2(k.value()).ok_or_else(malformed)?;
            new.insert(key.as_slice(), v.value()).map_err(index_err)?;
            moved += 1;
        }
    }
    txn.delete_table(BLOBS_V1).map_err(index_err)?;
    Ok(Some(moved))
}
