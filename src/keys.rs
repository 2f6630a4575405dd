//! The server key's check and rotation (DESIGN.md 5.8).
//!
//! - [`check_server_key`]: the database keeps the check value of its server key from the
//!   first start ([`latchkey_store::repo::server_key`]); a process whose `LATCHKEY_SECRET_KEY`
//!   gives another one refuses to start, naming both fingerprints and the fix. A process whose
//!   *previous* keys hold the database's key is a rotation: the check value moves to the new
//!   key (one conditional update), and from then on processes still on the old key refuse to
//!   start (they could not open what the new key seals).
//! - [`check_sealed_keys`]: every key id recorded in a sealed value must be the current or a
//!   previous key, else start-up fails naming `LATCHKEY_PREVIOUS_SECRET_KEYS`.
//! - [`rotate`]: re-seals every sealed value with the current key, in batches, each value by
//!   an atomic conditional update: safe while serving, resumable (a second run does what the
//!   first left), and every value stays readable at any point of an interruption.
//! - [`status`]: sealed values counted per key.

use std::collections::BTreeMap;

use latchkey_core::crypto::{KEY_ID_LEN, KeyId, SEALED_MAGIC};
use latchkey_core::{Clock, Keys};
use latchkey_store::repo::sealed::{SealedColumn, SealedRow};
use latchkey_store::repo::server_key;
use latchkey_store::{Store, StoreError};

/// What the key check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The first start on this database: the key's check value was stored.
    First(KeyId),
    /// The key matches the database's.
    Matched(KeyId),
    /// The database's key was one of the previous keys: the check value moved to the current one.
    Rotated {
        /// The database's key before.
        from: KeyId,
        /// The current key.
        to: KeyId,
    },
}

/// Errors of the key check.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The process's key is not the database's.
    #[error(
        "LATCHKEY_SECRET_KEY does not match the server key of this database: this process has the key with \
         fingerprint {mine}, the database was set up with the key with fingerprint {theirs}{previous}. Every \
         process of one database must use the same key: set LATCHKEY_SECRET_KEY to the key the other processes \
         use (an embedded install keeps it in LATCHKEY_DATA_DIR/secret.key); to move to a new key, give the \
         database's key in LATCHKEY_PREVIOUS_SECRET_KEYS (see \"Rotating the server key\" in the README)"
    )]
    Mismatch {
        /// This process's fingerprint.
        mine: KeyId,
        /// The database's fingerprint.
        theirs: String,
        /// A note on the previous keys given, if any.
        previous: String,
    },
    /// Sealed values name a key that is not configured.
    #[error(
        "LATCHKEY_PREVIOUS_SECRET_KEYS: {count} sealed value(s) ({columns}) were sealed by the key with \
         fingerprint {key}, which is neither LATCHKEY_SECRET_KEY nor in LATCHKEY_PREVIOUS_SECRET_KEYS; add that \
         key to LATCHKEY_PREVIOUS_SECRET_KEYS (and run `latchkey keys rotate` before removing it)"
    )]
    UnknownKey {
        /// The key's fingerprint.
        key: String,
        /// How many values.
        count: i64,
        /// Which columns.
        columns: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

fn fingerprint_of(bytes: &[u8]) -> String {
    bytes.iter().take(KEY_ID_LEN).map(|b| format!("{b:02x}")).collect()
}

/// Compares the process's key with the database's check value (stores it on the first start,
/// moves it on a rotation). Blocking: call at start-up, before serving or taking a job.
///
/// Errors: [`KeyError::Mismatch`] with both fingerprints and the fix.
pub fn check_server_key(store: &Store, keys: &Keys, clock: &dyn Clock) -> Result<KeyCheck, KeyError> {
    let mine = keys.current_id();
    let check = keys.current_check();
    store.run_blocking(|c| {
        // A few rounds: another process may insert or rotate between our read and write.
        for _ in 0..3 {
            let now = clock.now();
            let Some(stored) = server_key::read(c)? else {
                let row = server_key::insert_first(c, &mine.fingerprint(), &check, now)?;
                if latchkey_core::crypto::ct_eq(&row.check_value, &check) {
                    return Ok(Ok(KeyCheck::First(mine)));
                }
                continue;
            };
            if latchkey_core::crypto::ct_eq(&stored.check_value, &check) {
                return Ok(Ok(KeyCheck::Matched(mine)));
            }
            if let Some(from) = keys.previous_with_check(&stored.check_value) {
                if server_key::replace(c, &stored.check_value, &mine.fingerprint(), &check, now)? {
                    return Ok(Ok(KeyCheck::Rotated { from, to: mine }));
                }
                continue;
            }
            let previous = match keys.previous_ids().as_slice() {
                [] => String::new(),
                ids => format!(
                    " (LATCHKEY_PREVIOUS_SECRET_KEYS has {}, not it either)",
                    ids.iter().map(KeyId::fingerprint).collect::<Vec<_>>().join(", ")
                ),
            };
            return Ok(Err(KeyError::Mismatch { mine, theirs: stored.fingerprint, previous }));
        }
        Err(StoreError::Corrupt("server_key (changing under the check)"))
    })?
}

/// The key check on a connection of its own, before the migrations run; a database without
/// the check table yet (or unreachable: the migrations will say) passes.
///
/// Errors: [`KeyError::Mismatch`] when the stored check value belongs to neither the current
/// nor a previous key.
pub fn precheck(url: &str, keys: &Keys) -> Result<(), KeyError> {
    let Ok(manager) = latchkey_store::ConnManager::new(url) else { return Ok(()) };
    let Ok(mut conn) = manager.establish() else { return Ok(()) };
    let Ok(Some(stored)) = server_key::read(&mut conn) else { return Ok(()) };
    if latchkey_core::crypto::ct_eq(&stored.check_value, &keys.current_check())
        || keys.previous_with_check(&stored.check_value).is_some()
    {
        return Ok(());
    }
    Err(KeyError::Mismatch { mine: keys.current_id(), theirs: stored.fingerprint, previous: String::new() })
}

/// Sealed values counted per key, over every sealed column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStatus {
    /// Per key fingerprint (`None`: values of the first format, which name no key), per
    /// column name, the count.
    pub counts: BTreeMap<Option<String>, BTreeMap<&'static str, i64>>,
}

impl KeyStatus {
    /// Values that `keys rotate` would re-seal (not under `current`).
    pub fn to_rotate(&self, current: KeyId) -> i64 {
        let current = Some(current.fingerprint());
        self.counts.iter().filter(|(k, _)| **k != current).flat_map(|(_, cols)| cols.values()).sum()
    }
}

/// Counts the sealed values per key (one grouped scan per column in the database).
pub fn status(store: &Store) -> Result<KeyStatus, StoreError> {
    store.run_blocking(|c| {
        let mut out = KeyStatus::default();
        for column in SealedColumn::ALL {
            for kc in column.count_by_key(c, &SEALED_MAGIC, KEY_ID_LEN)? {
                let key = kc.key_id.as_deref().map(fingerprint_of);
                *out.counts.entry(key).or_default().entry(column.name()).or_default() += kc.count;
            }
        }
        Ok(out)
    })
}

/// Fails when sealed values name a key that is neither current nor previous.
pub fn check_sealed_keys(store: &Store, keys: &Keys) -> Result<KeyStatus, KeyError> {
    let st = status(store)?;
    let known: Vec<String> =
        std::iter::once(keys.current_id()).chain(keys.previous_ids()).map(|k| k.fingerprint()).collect();
    for (key, cols) in &st.counts {
        if let Some(key) = key
            && !known.contains(key)
        {
            return Err(KeyError::UnknownKey {
                key: key.clone(),
                count: cols.values().sum(),
                columns: cols.keys().copied().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(st)
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotated {
    /// Values re-sealed with the current key.
    pub resealed: u64,
    /// Values already sealed with the current key.
    pub current: u64,
    /// Values changed by another process while being re-sealed (they were written anew, so
    /// under the writer's current key; a second run checks them).
    pub skipped: u64,
    /// Values no known key opens (left as they are; they were unreadable before).
    pub unreadable: u64,
}

/// Re-seals every sealed value with the current key, `batch` rows at a time, one short
/// transaction per value; `progress` is told after every batch. Resumable and safe while
/// serving (see the module doc).
pub fn rotate(
    store: &Store,
    keys: &Keys,
    batch: i64,
    mut progress: impl FnMut(SealedColumn, &Rotated),
) -> Result<Rotated, StoreError> {
    let mut total = Rotated::default();
    for column in SealedColumn::ALL {
        let mut after: Option<String> = None;
        loop {
            let rows: Vec<SealedRow> = store.run_blocking(|c| column.batch(c, after.as_deref(), batch.max(1)))?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            for row in &rows {
                if !keys.needs_reseal(&row.sealed) {
                    total.current += 1;
                    continue;
                }
                let aad = column.aad(&row.owner);
                let Ok(plain) = keys.open(&row.sealed, &aad) else {
                    tracing::warn!(column = column.name(), row = %row.key, "a sealed value no known key opens: left as it is");
                    total.unreadable += 1;
                    continue;
                };
                let resealed = keys.seal(&plain, &aad);
                if store.run_blocking(|c| column.replace(c, row, &resealed))? {
                    total.resealed += 1;
                } else {
                    total.skipped += 1;
                }
            }
            progress(column, &total);
        }
    }
    Ok(total)
}
