//! The audit directory: its default place, opening it, naming records, writing a record
//! into the chain.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use super::{
    AuditRecord, MAX_FINDINGS, MAX_FINDINGS_BYTES, SCHEMA_VERSION, VerifyReport, redact::redact_record, verify,
};
use crate::Error;

/// The lock file inside the directory (never a record: it starts with a dot).
const LOCK_FILE: &str = ".lock";
/// Prefix of the temporary file a record is written to before its rename.
const TMP_PREFIX: &str = ".tmp-";
/// Prefix of the file [`AuditDir::open`] creates to prove the directory is writable.
const PROBE_PREFIX: &str = ".probe-";
/// Suffix of record files.
const RECORD_SUFFIX: &str = ".json";
/// Length of the `YYYYMMDDTHHMMSS.nnnnnnnnnZ` prefix of a record file name.
const STAMP_LEN: usize = 26;

/// Distinguishes temporary and probe files of threads of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The SHA-256 of `bytes`, as 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

/// The current time as RFC 3339 in UTC with nine fractional digits, e.g.
/// `2026-11-21T05:59:05.123456789Z`: the format of every time in a record.
pub fn now_rfc3339() -> String {
    format!("{:.9}", Timestamp::now())
}

/// The default audit directory:
///
/// 1. `$SNAT_AUDIT_DIR` if it is set and not empty;
/// 2. else `/var/lib/snat/audit` when the effective user is root;
/// 3. else `$XDG_STATE_HOME/snat/audit` if `XDG_STATE_HOME` is an absolute path (as the XDG
///    base directory specification requires);
/// 4. else `$HOME/.local/state/snat/audit` if `HOME` is set and not empty;
/// 5. else `/var/lib/snat/audit` (which [`AuditDir::open`] will then refuse with a message
///    asking for `--audit-dir`).
pub fn default_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    default_dir_from(|k| std::env::var_os(k), euid)
}

fn default_dir_from(var: impl Fn(&str) -> Option<OsString>, euid: u32) -> PathBuf {
    const SYSTEM: &str = "/var/lib/snat/audit";
    if let Some(dir) = var("SNAT_AUDIT_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if euid == 0 {
        return PathBuf::from(SYSTEM);
    }
    if let Some(state) = var("XDG_STATE_HOME").filter(|v| Path::new(v).is_absolute()) {
        return Path::new(&state).join("snat/audit");
    }
    if let Some(home) = var("HOME").filter(|v| !v.is_empty()) {
        return Path::new(&home).join(".local/state/snat/audit");
    }
    PathBuf::from(SYSTEM)
}

/// The audit directory of last resort, [`AuditDir::open_fallback`]'s second choice:
/// `snat-audit-<euid>` in the system's temporary directory ([`std::env::temp_dir`]:
/// `$TMPDIR`, else the system's default), e.g. `snat-audit-1000` for user 1000.
pub fn private_temp_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("snat-audit-{euid}"))
}

/// [`AuditDir::open_fallback`] with its two directories given.
fn open_fallback_in(failed: &Path, default: &Path, temp: &Path) -> Result<AuditDir, Vec<Error>> {
    let mut errors = Vec::new();
    if default != failed {
        match AuditDir::open(default) {
            Ok(dir) => return Ok(dir),
            Err(e) => errors.push(e),
        }
    }
    if temp != failed {
        match AuditDir::open_private(temp) {
            Ok(dir) => return Ok(dir),
            Err(e) => errors.push(e),
        }
    }
    Err(errors)
}

/// Formats a time as the `YYYYMMDDTHHMMSS.nnnnnnnnnZ` prefix of a record file name.
fn stamp(ts: Timestamp) -> Option<String> {
    let dt = Offset::UTC.to_datetime(ts);
    if !(0..=9999).contains(&dt.year()) {
        return None;
    }
    Some(format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:09}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond()
    ))
}

/// Parses a stamp made by [`stamp`]; `None` for anything else.
fn parse_stamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    if b.len() != STAMP_LEN || b[8] != b'T' || b[15] != b'.' || b[25] != b'Z' {
        return None;
    }
    let dt = jiff::civil::DateTime::new(
        i16::try_from(digits(0..4)?).ok()?,
        i8::try_from(digits(4..6)?).ok()?,
        i8::try_from(digits(6..8)?).ok()?,
        i8::try_from(digits(9..11)?).ok()?,
        i8::try_from(digits(11..13)?).ok()?,
        i8::try_from(digits(13..15)?).ok()?,
        i32::try_from(digits(16..25)?).ok()?,
    )
    .ok()?;
    Offset::UTC.to_timestamp(dt).ok()
}

/// True for a run id in the canonical form the writer accepts: a lower-case hyphenated UUID.
fn is_canonical_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// Splits a record file name into its time and run id; `None` if it is not one.
pub(super) fn parse_name(name: &str) -> Option<(Timestamp, &str)> {
    let stem = name.strip_suffix(RECORD_SUFFIX)?;
    if stem.len() <= STAMP_LEN + 1 || !stem.is_char_boundary(STAMP_LEN) {
        return None;
    }
    let (stamp_part, rest) = stem.split_at(STAMP_LEN);
    let run_id = rest.strip_prefix('-')?;
    if !is_canonical_uuid(run_id) {
        return None;
    }
    Some((parse_stamp(stamp_part)?, run_id))
}

/// The file name a record gets in an empty directory:
/// `<started_at as YYYYMMDDTHHMMSS.nnnnnnnnnZ>-<run_id>.json`.
///
/// [`AuditDir::write`] may raise the time part (see the module documentation) so that name
/// order stays chain order; the name it used is the one it returns. Fails when `started_at`
/// is not an RFC 3339 time between years 0 and 9999, or `run_id` is not a lower-case
/// hyphenated UUID.
pub fn record_file_name(record: &AuditRecord) -> Result<String, Error> {
    let invalid = |reason: String| Error::AuditRecordInvalid {
        run_id: record.run_id.clone(),
        reason,
    };
    if !is_canonical_uuid(&record.run_id) {
        return Err(invalid("run_id is not a lower-case hyphenated UUID".into()));
    }
    let ts: Timestamp = record.started_at.parse().map_err(|e| {
        invalid(format!(
            "started_at {:?} is not an RFC 3339 time with an offset: {e}",
            record.started_at
        ))
    })?;
    let stamp = stamp(ts).ok_or_else(|| invalid(format!("started_at {:?} is out of range", record.started_at)))?;
    Ok(format!("{stamp}-{}{RECORD_SUFFIX}", record.run_id))
}

/// Checks what the writer needs from a record before it takes the lock.
fn check_record(record: &AuditRecord) -> Result<(), Error> {
    let invalid = |reason: String| Error::AuditRecordInvalid {
        run_id: record.run_id.clone(),
        reason,
    };
    if record.schema_version != SCHEMA_VERSION {
        return Err(invalid(format!(
            "schema_version is {}, this writer writes {SCHEMA_VERSION}",
            record.schema_version
        )));
    }
    if let Some(i) = record.findings.iter().position(|f| !f.is_object()) {
        return Err(invalid(format!("finding #{i} is not a JSON object")));
    }
    for (i, s) in record.stages.iter().enumerate() {
        if !s.duration_ms.is_finite() || s.duration_ms < 0.0 {
            return Err(invalid(format!(
                "stage #{i} ({}) has duration_ms {}, which is not a duration",
                s.name, s.duration_ms
            )));
        }
    }
    Ok(())
}

/// Keeps the findings in order while they stay within [`MAX_FINDINGS`] and
/// [`MAX_FINDINGS_BYTES`] of compact JSON, and adds the number dropped to
/// `findings_truncated`.
fn bound_findings(record: &mut AuditRecord) {
    let mut bytes = 0usize;
    let mut keep = 0usize;
    for f in &record.findings {
        let len = serde_json::to_vec(f).map_or(usize::MAX, |v| v.len());
        if keep == MAX_FINDINGS || len > MAX_FINDINGS_BYTES - bytes {
            break;
        }
        bytes += len;
        keep += 1;
    }
    let dropped = record.findings.len() - keep;
    record.findings.truncate(keep);
    record.findings_truncated = record
        .findings_truncated
        .saturating_add(u64::try_from(dropped).unwrap_or(u64::MAX));
}

/// Rewrites every time of the record in the one form records use (UTC, nine fractional
/// digits: the same instant, so nothing is lost); fails on a time that does not parse.
fn normalise_times(record: &mut AuditRecord) -> Result<(), Error> {
    fn normalise(field: &str, value: &mut String, run_id: &str) -> Result<(), Error> {
        let ts: Timestamp = value.parse().map_err(|e| Error::AuditRecordInvalid {
            run_id: run_id.to_owned(),
            reason: format!("{field} {value:?} is not an RFC 3339 time with an offset: {e}"),
        })?;
        *value = format!("{ts:.9}");
        Ok(())
    }
    let run_id = record.run_id.clone();
    normalise("started_at", &mut record.started_at, &run_id)?;
    normalise("ended_at", &mut record.ended_at, &run_id)?;
    for (i, stage) in record.stages.iter_mut().enumerate() {
        normalise(&format!("started_at of stage #{i}"), &mut stage.started_at, &run_id)?;
    }
    Ok(())
}

/// An audit directory, proven writable when it was opened.
#[derive(Debug, Clone)]
pub struct AuditDir {
    path: PathBuf,
}

impl AuditDir {
    /// Opens the audit directory at `path`, creating it and its parents with mode 0700 if
    /// missing (an existing directory keeps its permissions), and proves that records can
    /// be written there: creates, writes, fsyncs and removes a probe file, and creates the
    /// lock file. Call it before the run does anything, so that a directory that cannot
    /// take the record stops the run at once with [`Error::AuditDirUnusable`].
    pub fn open(path: impl Into<PathBuf>) -> Result<AuditDir, Error> {
        let path = path.into();
        let unusable = |what: &'static str, source: io::Error| Error::AuditDirUnusable {
            dir: path.clone(),
            what,
            source,
        };
        if path.as_os_str().is_empty() {
            return Err(unusable(
                "the path is empty",
                io::Error::new(io::ErrorKind::InvalidInput, "empty path"),
            ));
        }
        match fs::metadata(&path) {
            Ok(m) if !m.is_dir() => {
                return Err(unusable(
                    "it exists and is not a directory",
                    io::Error::from(io::ErrorKind::NotADirectory),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|e| unusable("cannot create it", e))?,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(unusable("one of its parents is not a directory", e));
            }
            Err(e) => return Err(unusable("cannot look at it", e)),
        }
        fs::read_dir(&path).map_err(|e| unusable("cannot list it", e))?;

        let probe = path.join(format!("{PROBE_PREFIX}{}", unique_suffix()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .map_err(|e| unusable("cannot create a file in it", e))?;
        let written = file
            .write_all(b"snat audit directory probe\n")
            .map_err(|e| unusable("cannot write a file in it", e))
            .and_then(|()| file.sync_all().map_err(|e| unusable("cannot fsync a file in it", e)));
        drop(file);
        let removed = fs::remove_file(&probe).map_err(|e| unusable("cannot remove a file from it", e));
        written?;
        removed?;

        let dir = AuditDir { path: path.clone() };
        dir.open_lock_file()
            .map_err(|e| unusable("cannot create its lock file .lock", e))?;
        Ok(dir)
    }

    /// Opens `path` as [`open`](Self::open) does, for a directory in a place other users
    /// can write too (the system's temporary directory): creates it with mode 0700 if
    /// missing (its parent must exist), and refuses it with [`Error::AuditDirUnusable`]
    /// if it is a symbolic link or not a directory, is not owned by the effective user, or
    /// other users may write it. Another user cannot then have planted it, or records in it.
    pub fn open_private(path: impl Into<PathBuf>) -> Result<AuditDir, Error> {
        use std::os::unix::fs::MetadataExt;
        let path = path.into();
        let unusable = |what: &'static str, source: io::Error| Error::AuditDirUnusable {
            dir: path.clone(),
            what,
            source,
        };
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unusable("cannot create it", e)),
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| unusable("cannot look at it", e))?;
        if meta.file_type().is_symlink() {
            return Err(unusable(
                "it is a symbolic link, which another user may have planted",
                io::Error::from(io::ErrorKind::PermissionDenied),
            ));
        }
        if !meta.is_dir() {
            return Err(unusable(
                "it exists and is not a directory",
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(unusable(
                "it exists and is not owned by this user",
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("owned by uid {}, this process runs as uid {euid}", meta.uid()),
                ),
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unusable(
                "other users may write it",
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("mode {:o}; chmod 700 it or remove it", meta.mode() & 0o7777),
                ),
            ));
        }
        AuditDir::open(path)
    }

    /// Opens the directory that records a run refused because its audit directory
    /// `failed` cannot be opened, so that the refusal still leaves its record: the first
    /// of these that opens,
    ///
    /// 1. [`default_dir`], when it is not `failed`;
    /// 2. [`private_temp_dir`], opened with [`open_private`](Self::open_private).
    ///
    /// Fails with the error of each directory tried, in that order.
    pub fn open_fallback(failed: &Path) -> Result<AuditDir, Vec<Error>> {
        open_fallback_in(failed, &default_dir(), &private_temp_dir())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_lock_file(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.path.join(LOCK_FILE))
    }

    /// Writes `record` as the new head of the chain and returns the path of its file.
    ///
    /// Under an exclusive lock of the directory: sets `record.prev_sha256` to the SHA-256
    /// of the newest record file (`None` if there is none), names the file (see
    /// [`record_file_name`]; the time part is raised if needed so that the new record
    /// sorts last), and writes it atomically (temporary file, fsync, rename, fsync of the
    /// directory). The writer also redacts `params`, stage `args` and `findings` again, the
    /// secret parts of stage errors and of `outcome.message`, and every occurrence of the
    /// record's `secret_values` in those and in the actions (see the module documentation,
    /// "What never enters a record"); it keeps `findings` within [`MAX_FINDINGS`] and
    /// [`MAX_FINDINGS_BYTES`] (counting the rest in `findings_truncated`), and writes every
    /// time as UTC with nine fractional digits (the same instant). `record` ends up exactly
    /// as written: its `secret_values`, which are never written, are emptied.
    ///
    /// Fails without writing anything when the record cannot be named
    /// ([`Error::AuditRecordInvalid`]: a bad `run_id`, a time that is not RFC 3339, a
    /// negative or non-finite duration, a finding that is not a JSON object, another schema
    /// version), and with [`Error::AuditIo`] on I/O errors.
    pub fn write(&self, record: &mut AuditRecord) -> Result<PathBuf, Error> {
        check_record(record)?;
        let mut name = record_file_name(record)?;
        normalise_times(record)?;
        let secrets = std::mem::take(&mut record.secret_values);
        redact_record(record, &secrets);
        bound_findings(record);

        let lock_path = self.path.join(LOCK_FILE);
        let io_err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::AuditIo { what, path, source }
        };
        let lock = self
            .open_lock_file()
            .map_err(io_err("cannot open the lock file", &lock_path))?;
        loop {
            match lock.lock() {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("cannot lock", &lock_path)(e)),
            }
        }

        let newest = list_candidates(&self.path)?
            .into_iter()
            .rev()
            .find_map(|n| n.to_str().and_then(|s| parse_name(s).map(|(ts, _)| (s.to_owned(), ts))));
        record.prev_sha256 = match &newest {
            None => None,
            Some((newest_name, newest_ts)) => {
                if name.as_str() <= newest_name.as_str() {
                    let raised = newest_ts
                        .checked_add(SignedDuration::from_nanos(1))
                        .ok()
                        .and_then(stamp)
                        .ok_or_else(|| Error::AuditRecordInvalid {
                            run_id: record.run_id.clone(),
                            reason: format!("no file name sorts after the newest record {newest_name}"),
                        })?;
                    name = format!("{raised}-{}{RECORD_SUFFIX}", record.run_id);
                }
                let prev_path = self.path.join(newest_name);
                let bytes = fs::read(&prev_path).map_err(io_err("cannot read the previous record", &prev_path))?;
                Some(sha256_hex(&bytes))
            }
        };

        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::AuditRecordInvalid {
            run_id: record.run_id.clone(),
            reason: format!("cannot serialise it: {e}"),
        })?;
        bytes.push(b'\n');

        let final_path = self.path.join(&name);
        let tmp_path = self
            .path
            .join(format!("{TMP_PREFIX}{}-{}", record.run_id, unique_suffix()));
        let result = write_new_file(&tmp_path, &bytes)
            .map_err(io_err("cannot write the record to", &tmp_path))
            .and_then(|()| {
                fs::rename(&tmp_path, &final_path).map_err(io_err("cannot rename the record to", &final_path))
            });
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot fsync the directory", &self.path))?;
        drop(lock);
        Ok(final_path)
    }

    /// [`verify`] on this directory.
    pub fn verify(&self) -> Result<VerifyReport, Error> {
        verify(&self.path)
    }
}

fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The names of the files that may be records (`*.json` not starting with a dot), in
/// byte order.
pub(super) fn list_candidates(dir: &Path) -> Result<Vec<OsString>, Error> {
    let io_err = |source| Error::AuditIo {
        what: "cannot list the audit directory",
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let name = entry.map_err(io_err)?.file_name();
        let b = name.as_bytes();
        if !b.starts_with(b".") && b.ends_with(RECORD_SUFFIX.as_bytes()) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::empty(b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")]
    #[case::abc(b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")]
    fn sha256_of_known_inputs(#[case] input: &[u8], #[case] hex: &str) {
        assert_eq!(sha256_hex(input), hex);
    }

    #[rstest]
    #[case::env_wins(&[("SNAT_AUDIT_DIR", "/x/a"), ("HOME", "/home/u")], 1000, "/x/a")]
    #[case::env_wins_for_root(&[("SNAT_AUDIT_DIR", "rel/dir")], 0, "rel/dir")]
    #[case::empty_env_ignored(&[("SNAT_AUDIT_DIR", ""), ("HOME", "/home/u")], 1000, "/home/u/.local/state/snat/audit")]
    #[case::root(&[("HOME", "/home/r"), ("XDG_STATE_HOME", "/s")], 0, "/var/lib/snat/audit")]
    #[case::xdg(&[("HOME", "/home/u"), ("XDG_STATE_HOME", "/s")], 1000, "/s/snat/audit")]
    #[case::relative_xdg_ignored(&[("HOME", "/home/u"), ("XDG_STATE_HOME", "s")], 1000, "/home/u/.local/state/snat/audit")]
    #[case::home(&[("HOME", "/home/u")], 1000, "/home/u/.local/state/snat/audit")]
    #[case::nothing(&[], 1000, "/var/lib/snat/audit")]
    fn default_dir_rules(#[case] env: &[(&str, &str)], #[case] euid: u32, #[case] want: &str) {
        let var = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v));
        assert_eq!(default_dir_from(var, euid), PathBuf::from(want));
    }

    /// The fallback never retries the directory that failed: the default when it is another
    /// directory, else the private temporary directory; with neither usable, the errors of
    /// both, in that order.
    #[test]
    fn fallback_takes_the_first_other_directory_that_opens() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, "").unwrap();
        let failed = file.join("audit");
        let default = tmp.path().join("default");
        let temp = tmp.path().join("snat-audit-test");

        let dir = open_fallback_in(&failed, &default, &temp).unwrap();
        assert_eq!(dir.path(), default);
        assert!(!temp.exists(), "the temporary directory is not needed");

        let dir = open_fallback_in(&default, &default, &temp).unwrap();
        assert_eq!(dir.path(), temp, "the default failed: not tried again");
        assert_eq!(fs::metadata(&temp).unwrap().permissions().mode() & 0o777, 0o700);

        let other = file.join("default");
        let errors = open_fallback_in(&failed, &other, &failed).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown.len(),
            1,
            "the temporary directory is the one that failed: {shown:?}"
        );
        assert!(shown[0].contains(&other.display().to_string()), "{shown:?}");

        let errors = open_fallback_in(&failed, &other, &file.join("tmp")).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].contains(&other.display().to_string()), "{shown:?}");
        assert!(shown[1].contains(&file.join("tmp").display().to_string()), "{shown:?}");
    }

    #[test]
    fn the_private_temp_dir_is_named_with_the_user_id() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let dir = private_temp_dir();
        assert_eq!(dir.parent(), Some(std::env::temp_dir().as_path()));
        assert_eq!(dir.file_name().unwrap().to_string_lossy(), format!("snat-audit-{euid}"));
    }

    #[test]
    fn now_has_nanoseconds_and_utc() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2026-11-21T05:59:05.123456789Z".len(), "{now}");
        assert!(now.ends_with('Z'), "{now}");
        now.parse::<Timestamp>().unwrap();
    }

    #[rstest]
    #[case("2026-11-21T05:59:05.123456789Z", "20261121T055905.123456789Z")]
    #[case("2026-11-21T05:59:05Z", "20261121T055905.000000000Z")]
    #[case("2026-11-21T07:59:05.5+02:00", "20261121T055905.500000000Z")]
    #[case("0001-01-01T00:00:00Z", "00010101T000000.000000000Z")]
    fn stamps_are_utc_and_round_trip(#[case] rfc: &str, #[case] want: &str) {
        let ts: Timestamp = rfc.parse().unwrap();
        let s = stamp(ts).unwrap();
        assert_eq!(s, want);
        assert_eq!(parse_stamp(&s), Some(ts));
    }

    #[rstest]
    #[case::ok("20261121T055905.123456789Z-3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f.json", true)]
    #[case::upper_uuid("20261121T055905.123456789Z-3F2B8C1E-5D4A-4C2B-9E1F-0A1B2C3D4E5F.json", false)]
    #[case::no_dash("20261121T055905.123456789Z3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f.json", false)]
    #[case::bad_month("20261321T055905.123456789Z-3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f.json", false)]
    #[case::short_nanos("20261121T055905.12345678Z-3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f.json", false)]
    #[case::not_json("20261121T055905.123456789Z-3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f.txt", false)]
    #[case::stray("notes.json", false)]
    #[case::multibyte("2026112é055905.123456789Z-3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f.json", false)]
    fn record_names(#[case] name: &str, #[case] is_record: bool) {
        assert_eq!(parse_name(name).is_some(), is_record, "{name}");
    }

    /// The reviewer's runs: a secret parameter quoted in the outcome, a secret path in a
    /// stage error and a JWT inside a finding's summary never reach the file.
    #[test]
    fn write_keeps_secret_values_out_of_every_string_of_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AuditDir::open(tmp.path().join("audit")).unwrap();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        let raw: std::collections::BTreeMap<String, String> =
            [("token", "SuperSecretValue123"), ("log", "/nonexistent?sig=SECRETSIG")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let mut record: AuditRecord = serde_json::from_value(serde_json::json!({
            "schema_version": 2, "run_id": "3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f",
            "tool": {"name": "t", "version": "0"}, "playbook": {"path": "p.rhai", "sha256": null},
            "params": {}, "started_at": "2026-11-21T05:59:05Z", "ended_at": "2026-11-21T05:59:06Z",
            "host": {"hostname": "h", "kernel_release": "k", "uid": 0, "euid": 0, "capabilities": []},
            "stages": [{"name": "tcptracer::read", "args": {"path": "/nonexistent?sig=SECRETSIG"},
                        "started_at": "2026-11-21T05:59:05Z", "duration_ms": 1.0, "items": null, "outcome": "failed",
                        "error": "cannot open /nonexistent?sig=SECRETSIG: No such file or directory (os error 2)"}],
            "actions": [], "verdict": null, "exit_code": 2, "prev_sha256": null,
            "outcome": {"kind": "playbook_error", "message": "p.rhai:1:9: parameter `token`: \"SuperSecretValue123\" is not an integer"},
            "findings": [{"kind": "k", "severity": "info", "summary": format!("note={jwt} (SuperSecretValue123)"), "evidence": {}}],
            "findings_truncated": 0,
        }))
        .unwrap();
        record.params = super::super::redact_params(&raw);
        record.secret_values = super::super::SecretValues::from_params(&raw);
        let path = dir.write(&mut record).unwrap();
        let bytes = fs::read_to_string(&path).unwrap();
        for secret in ["SuperSecretValue123", "SECRETSIG", jwt] {
            assert!(!bytes.contains(secret), "{secret} in the record:\n{bytes}");
        }
        assert!(record.secret_values.is_empty(), "the writer empties them");
        let read: AuditRecord = serde_json::from_str(&bytes).unwrap();
        assert_eq!(read, record, "the record ends up exactly as written");
        assert_eq!(
            read.outcome.message.as_deref(),
            Some("p.rhai:1:9: parameter `token`: \"<redacted>\" is not an integer")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Whatever the findings, the kept ones are a prefix within both bounds, and kept
        /// plus dropped is what was given.
        #[test]
        fn findings_bound_keeps_an_in_order_prefix_within_the_bounds(
            sizes in proptest::collection::vec(0usize..300_000, 0..12),
            extra in 0usize..3,
        ) {
            let mut record: AuditRecord = serde_json::from_value(serde_json::json!({
                "schema_version": 2, "run_id": "3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f",
                "tool": {"name": "t", "version": "0"}, "playbook": {"path": "p", "sha256": null},
                "params": {}, "started_at": "2026-11-21T05:59:05Z", "ended_at": "2026-11-21T05:59:05Z",
                "host": {"hostname": "h", "kernel_release": "k", "uid": 0, "euid": 0, "capabilities": []},
                "stages": [], "actions": [], "outcome": {"kind": "completed", "message": null},
                "verdict": null, "exit_code": 0, "prev_sha256": null,
            })).unwrap();
            let mut given: Vec<serde_json::Value> = sizes.iter().enumerate()
                .map(|(i, n)| serde_json::json!({"i": i, "pad": "x".repeat(*n)})).collect();
            // Past the count bound too, with small findings.
            given.extend((0..extra * MAX_FINDINGS).map(|i| serde_json::json!({"i": sizes.len() + i})));
            record.findings = given.clone();
            record.findings_truncated = 0;
            bound_findings(&mut record);
            let kept = record.findings.len();
            proptest::prop_assert!(kept <= MAX_FINDINGS);
            let bytes: usize = record.findings.iter().map(|f| serde_json::to_vec(f).unwrap().len()).sum();
            proptest::prop_assert!(bytes <= MAX_FINDINGS_BYTES);
            proptest::prop_assert_eq!(&record.findings[..], &given[..kept]);
            proptest::prop_assert_eq!(kept as u64 + record.findings_truncated, given.len() as u64);
            if kept < given.len() && kept < MAX_FINDINGS {
                let next = serde_json::to_vec(&given[kept]).unwrap().len();
                proptest::prop_assert!(bytes + next > MAX_FINDINGS_BYTES, "the next one would not fit");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_name_never_panics(s in "\\PC{0,80}") {
            let _ = parse_name(&s);
            let _ = parse_stamp(&s);
        }

        #[test]
        fn stamp_order_is_time_order(a in 0i64..253_402_300_799, b in 0i64..253_402_300_799, na in 0i32..1_000_000_000, nb in 0i32..1_000_000_000) {
            let ta = Timestamp::new(a, na).unwrap();
            let tb = Timestamp::new(b, nb).unwrap();
            let (sa, sb) = (stamp(ta).unwrap(), stamp(tb).unwrap());
            proptest::prop_assert_eq!(sa.cmp(&sb), ta.cmp(&tb));
            proptest::prop_assert_eq!(parse_stamp(&sa), Some(ta));
        }
    }
}
