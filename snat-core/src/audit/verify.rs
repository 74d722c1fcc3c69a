//! Verifying the chain of an audit directory (the rules are in the module documentation of
//! [`crate::audit`]).

use std::fs;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::dir::{list_candidates, parse_name};
use super::{AuditRecord, SCHEMA_VERSION, sha256_hex};
use crate::Error;

/// Where the chain of an audit directory is broken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The file at which the check failed.
    pub file: PathBuf,
    /// What is wrong, e.g. `prev_sha256 is … but the previous record … hashes to …: a
    /// record was edited or removed`.
    pub reason: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many files were examined (every `*.json` file not starting with a dot).
    pub records: usize,
    /// The first break of the chain in name order; `None` when the whole chain holds.
    pub first_break: Option<ChainBreak>,
    /// The newest record file (the head of the chain), if any.
    pub head: Option<PathBuf>,
    /// SHA-256 of the head's bytes. Nothing in the directory vouches for the head: pin
    /// this value elsewhere and compare it on the next verification to detect an edit of
    /// the newest record or the removal of the newest records.
    pub head_sha256: Option<String>,
}

impl VerifyReport {
    /// True when no break was found.
    pub fn is_ok(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Verifies the chain of records in `dir` (see the module documentation for the rules).
///
/// A broken chain is not an error: it is reported in [`VerifyReport::first_break`].
/// Errors are for a directory or file that cannot be read at all ([`Error::AuditIo`]).
pub fn verify(dir: &Path) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport {
        records: 0,
        first_break: None,
        head: None,
        head_sha256: None,
    };
    // (file name, hash) of the previous record-named file.
    let mut prev: Option<(String, String)> = None;
    for name in list_candidates(dir)? {
        let path = dir.join(&name);
        report.records += 1;
        let meta = fs::symlink_metadata(&path).map_err(|source| Error::AuditIo {
            what: "cannot look at",
            path: path.clone(),
            source,
        })?;
        let display = name.to_string_lossy().into_owned();
        let Some((name_ts, name_run)) = name.to_str().and_then(parse_name) else {
            note_break(
                &mut report,
                &path,
                format!(
                    "{display} is not named like a record (<YYYYMMDDTHHMMSS.nnnnnnnnnZ>-<run uuid>.json): a stray file, or a renamed record; move it out of the audit directory"
                ),
            );
            continue;
        };
        if !meta.is_file() {
            note_break(&mut report, &path, format!("{display} is not a regular file"));
            continue;
        }
        let bytes = fs::read(&path).map_err(|source| Error::AuditIo {
            what: "cannot read record",
            path: path.clone(),
            source,
        })?;
        let hash = sha256_hex(&bytes);
        if let Err(reason) = check_link(&bytes, name_ts, name_run, prev.as_ref()) {
            note_break(&mut report, &path, reason);
        }
        report.head = Some(path);
        report.head_sha256 = Some(hash.clone());
        prev = Some((display, hash));
    }
    Ok(report)
}

fn note_break(report: &mut VerifyReport, file: &Path, reason: String) {
    if report.first_break.is_none() {
        report.first_break = Some(ChainBreak {
            file: file.to_path_buf(),
            reason,
        });
    }
}

/// Checks one record file against its name and the previous record.
fn check_link(bytes: &[u8], name_ts: Timestamp, name_run: &str, prev: Option<&(String, String)>) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let msg = full.strip_suffix(&suffix).unwrap_or(&full);
        format!("not valid JSON at {}:{}: {msg}", e.line(), e.column())
    })?;
    match value.get("schema_version").map(|v| v.as_u64()) {
        None => return Err("has no schema_version: not an audit record".into()),
        Some(Some(v)) if (1..=u64::from(SCHEMA_VERSION)).contains(&v) => {}
        Some(v) => {
            let shown = v.map_or_else(|| value["schema_version"].to_string(), |n| n.to_string());
            return Err(format!(
                "schema_version {shown} is not supported (this snat reads 1 to {SCHEMA_VERSION}): upgrade snat, or the record was edited"
            ));
        }
    }
    let record: AuditRecord = serde_json::from_value(value).map_err(|e| format!("not a valid audit record: {e}"))?;
    if record.run_id != name_run {
        return Err(format!(
            "the file name says run {name_run} but the record's run_id is {}: the file was renamed or its content replaced",
            record.run_id
        ));
    }
    match record.started_at.parse::<Timestamp>() {
        Err(e) => {
            return Err(format!(
                "started_at {:?} is not an RFC 3339 time: {e}",
                record.started_at
            ));
        }
        Ok(started) if started > name_ts => {
            return Err(format!(
                "the file name's time is earlier than the record's started_at {}: the file was renamed or started_at edited",
                record.started_at
            ));
        }
        Ok(_) => {}
    }
    match (prev, &record.prev_sha256) {
        (None, None) => Ok(()),
        (None, Some(h)) => Err(format!(
            "first record has prev_sha256 set ({h}): earlier records were removed"
        )),
        (Some((prev_name, _)), None) => Err(format!(
            "prev_sha256 is null but the record follows {prev_name}: records were added before it, or it was edited"
        )),
        (Some((prev_name, prev_hash)), Some(h)) if h != prev_hash => Err(format!(
            "prev_sha256 is {h} but the previous record {prev_name} hashes to {prev_hash}: a record was edited or removed"
        )),
        (Some(_), Some(_)) => Ok(()),
    }
}
