//! The audit trail's hash chain. Audit records are written concurrently by every transfer worker
//! and coordinator, so a chain inside the records would put every file movement behind one
//! writer; instead a sealer (the failover coordinator) reads the trail in stream order and
//! appends [`Seal`]s to their own stream: each seal lists the digest of every record it covers
//! (stream sequence, subject and bytes) and carries the hash of the seal before it. Changing,
//! deleting or inserting a record, or deleting or changing a seal, breaks the chain at a place
//! `ferry audit verify` names. (Cutting off the newest records *and* their seals is not visible
//! from inside: verify prints the chain's head, for the operator to keep elsewhere.)

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first seal's `prev`.
pub const GENESIS: &str = "genesis";

/// Records a seal covers at most.
pub const MAX_RECORDS: usize = 1000;

/// One link of the chain: records `first_seq..=last_seq` of the audit stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seal {
    /// `(stream sequence, digest)` of every record covered, in order.
    pub records: Vec<(u64, String)>,
    /// The previous seal's `hash` ([`GENESIS`] for the first).
    pub prev: String,
    /// [`seal_hash`] of `prev` and `records`.
    pub hash: String,
    pub sealed_at: chrono::DateTime<chrono::Utc>,
    /// Which coordinator sealed it.
    pub by: String,
}

/// A record's digest: SHA-256 over its stream sequence, subject and payload, 128 bits in hex.
pub fn record_digest(seq: u64, subject: &str, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update((subject.len() as u64).to_be_bytes());
    h.update(subject.as_bytes());
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload);
    hex::encode(&h.finalize()[..16])
}

/// A seal's hash: SHA-256 over the previous seal's hash and every `(sequence, digest)` it covers.
pub fn seal_hash(prev: &str, records: &[(u64, String)]) -> String {
    let mut h = Sha256::new();
    h.update((prev.len() as u64).to_be_bytes());
    h.update(prev.as_bytes());
    for (seq, digest) in records {
        h.update(seq.to_be_bytes());
        h.update(digest.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Seal {
    pub fn new(prev: &str, records: Vec<(u64, String)>, by: &str) -> Seal {
        Seal {
            hash: seal_hash(prev, &records),
            prev: prev.to_string(),
            records,
            sealed_at: chrono::Utc::now(),
            by: by.to_string(),
        }
    }

    pub fn first_seq(&self) -> u64 {
        self.records.first().map_or(0, |r| r.0)
    }

    pub fn last_seq(&self) -> u64 {
        self.records.last().map_or(0, |r| r.0)
    }

    /// Its hash matches its contents.
    pub fn holds(&self) -> bool {
        !self.records.is_empty() && seal_hash(&self.prev, &self.records) == self.hash
    }
}

/// One audit record as verification reads it back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub digest: String,
}

/// What `ferry audit verify` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    pub seals: u64,
    /// Records checked against their seal.
    pub records: u64,
    /// Records newer than the last seal (not sealed yet).
    pub unsealed: u64,
    /// The last seal's hash: keep it elsewhere to notice a trail cut off at its end.
    pub head: Option<String>,
    /// The first break, in words, naming the record or seal; `None`: the chain holds.
    pub broken: Option<String>,
}

/// Check `seals` (in stream order, with their stream sequences) against the records read back
/// from the audit stream in order. `first_kept` is the audit stream's first sequence: sealed
/// records before it expired by age, which is not a break. `seals_complete` says the seal stream
/// still starts at its first seal (otherwise the first kept seal's `prev` cannot be checked).
pub fn verify(
    seals: &[(u64, Seal)],
    seals_complete: bool,
    records: impl IntoIterator<Item = Stored>,
    first_kept: u64,
) -> Verdict {
    let mut verdict = Verdict {
        seals: seals.len() as u64,
        head: seals.last().map(|(_, s)| s.hash.clone()),
        ..Verdict::default()
    };
    let mut expected: Vec<(u64, &str, u64)> = Vec::new();
    for (i, (stream_seq, seal)) in seals.iter().enumerate() {
        let at = format!(
            "seal {stream_seq} (records {}..={})",
            seal.first_seq(),
            seal.last_seq()
        );
        if !seal.holds() {
            verdict.broken = Some(format!(
                "{at}: its hash does not match its contents (seal changed)"
            ));
            return verdict;
        }
        let chained = match i {
            0 if seals_complete => seal.prev == GENESIS,
            0 => true,
            _ => seal.prev == seals[i - 1].1.hash,
        };
        if !chained {
            verdict.broken = Some(format!(
                "{at}: it does not follow the seal before it (a seal was removed or replaced)"
            ));
            return verdict;
        }
        if i > 0 && seal.first_seq() <= seals[i - 1].1.last_seq() {
            verdict.broken = Some(format!("{at}: it covers records an earlier seal covers"));
            return verdict;
        }
        expected.extend(
            seal.records
                .iter()
                .map(|(seq, d)| (*seq, d.as_str(), *stream_seq)),
        );
    }
    let mut want = expected
        .into_iter()
        .filter(|(seq, ..)| *seq >= first_kept)
        .peekable();
    for record in records {
        // Sealed records the stream no longer has (deleted), before this one.
        if let Some(&(seq, _, seal)) = want.peek()
            && seq < record.seq
        {
            verdict.broken = Some(format!(
                "audit record {seq} (sealed by seal {seal}) is missing: deleted after it was sealed"
            ));
            return verdict;
        }
        match want.next() {
            Some((seq, digest, seal)) if seq == record.seq => {
                if digest != record.digest {
                    verdict.broken = Some(format!(
                        "audit record {seq} ({}) was changed after seal {seal} sealed it",
                        record.subject
                    ));
                    return verdict;
                }
                verdict.records += 1;
            }
            Some((seq, _, seal)) => {
                verdict.broken = Some(format!(
                    "audit record {} ({}) is not in seal {seal}, which covers it (expected record {seq}): inserted",
                    record.seq, record.subject
                ));
                return verdict;
            }
            None => verdict.unsealed += 1,
        }
    }
    if let Some((seq, _, seal)) = want.next() {
        verdict.broken = Some(format!(
            "audit record {seq} (sealed by seal {seal}) is missing: deleted after it was sealed"
        ));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_to_a_record_or_the_chain_changes_the_hash() {
        let records = vec![(1, record_digest(1, "a", b"x")), (2, record_digest(2, "a", b"y"))];
        let seal = Seal::new(GENESIS, records.clone(), "n1");
        assert!(seal.holds());
        assert_ne!(record_digest(1, "a", b"x"), record_digest(1, "a", b"x "));
        assert_ne!(record_digest(1, "a", b"x"), record_digest(2, "a", b"x"));
        assert_ne!(record_digest(1, "ab", b""), record_digest(1, "a", b"b"));
        let mut forged = seal.clone();
        forged.records.remove(0);
        assert!(!forged.holds());
        assert_ne!(Seal::new("other", records, "n1").hash, seal.hash);
    }

    fn stored(seq: u64, body: &[u8]) -> Stored {
        Stored {
            seq,
            subject: "ferry.audit.file.t".into(),
            digest: record_digest(seq, "ferry.audit.file.t", body),
        }
    }

    #[test]
    fn verify_names_the_first_changed_missing_or_inserted_record_and_a_broken_chain() {
        let digests = |range: std::ops::RangeInclusive<u64>| -> Vec<(u64, String)> {
            range.map(|s| (s, stored(s, b"r").digest)).collect()
        };
        let one = Seal::new(GENESIS, digests(1..=3), "n1");
        let two = Seal::new(&one.hash, digests(4..=5), "n1");
        let seals = vec![(1, one.clone()), (2, two.clone())];
        let all = || (1..=6).map(|s| stored(s, b"r")).collect::<Vec<_>>();
        let fine = verify(&seals, true, all(), 1);
        assert_eq!(fine.broken, None);
        assert_eq!((fine.seals, fine.records, fine.unsealed), (2, 5, 1));
        assert_eq!(fine.head, Some(two.hash.clone()));
        // Expired by age is not a break.
        assert_eq!(verify(&seals, true, all().split_off(2), 3).broken, None);

        let mut changed = all();
        changed[3] = stored(4, b"forged");
        let v = verify(&seals, true, changed, 1);
        assert!(
            v.broken
                .as_deref()
                .unwrap()
                .contains("audit record 4 (ferry.audit.file.t) was changed"),
            "{v:?}"
        );

        let mut deleted = all();
        deleted.remove(1);
        let v = verify(&seals, true, deleted, 1);
        assert!(
            v.broken
                .as_deref()
                .unwrap()
                .contains("audit record 2 (sealed by seal 1) is missing"),
            "{v:?}"
        );
        let v = verify(&seals, true, all()[..4].to_vec(), 1);
        assert!(
            v.broken
                .as_deref()
                .unwrap()
                .contains("audit record 5 (sealed by seal 2) is missing"),
            "{v:?}"
        );

        let v = verify(&[(2, two.clone())], true, all(), 1);
        assert!(v.broken.as_deref().unwrap().contains("does not follow"), "{v:?}");
        assert_eq!(
            verify(&[(2, two.clone())], false, all().split_off(3), 4).broken,
            None
        );
        let mut forged = two.clone();
        forged.records[0].1 = stored(4, b"forged").digest;
        let v = verify(&[(1, one), (2, forged)], true, all(), 1);
        assert!(
            v.broken
                .as_deref()
                .unwrap()
                .contains("seal 2 (records 4..=5): its hash"),
            "{v:?}"
        );
    }
}
