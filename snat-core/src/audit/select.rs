//! Picking records of an audit directory by a [`Selector`] (`last`, `prev:triage`, a run
//! id...), so that a user can compare runs without knowing file names (the rules are in
//! the module documentation of [`crate::audit`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::dir::{list_candidates, parse_name};
use super::{AuditRecord, OutcomeKind, SCHEMA_VERSION};
use crate::Error;

/// Where a [`Selector`] starts counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// The newest record that can be compared (see [`select`]).
    Last,
    /// The record whose run id is, or starts with, this (lower-case, at least 8 characters).
    RunId(String),
}

/// Which record of an audit directory to pick: the text after `audit:` in
/// `report::load("audit:prev:triage")`.
///
/// Syntax: `REF[~N][:PLAYBOOK]`, where `REF` is `last` (also `latest`), `prev` (also
/// `previous`, the same as `last~1`) or a run id or a unique prefix of one (at least 8
/// characters); `~N` goes back N records from `REF` (`~` alone is `~1`); `PLAYBOOK` counts
/// only runs of that playbook (see [`playbook_matches`]).
///
/// ```
/// use snat_core::audit::{Reference, Selector};
/// let s: Selector = "prev:triage".parse().unwrap();
/// assert_eq!((s.reference, s.back, s.playbook.as_deref()), (Reference::Last, 1, Some("triage")));
/// let s: Selector = "3f2b8c1e~2".parse().unwrap();
/// assert_eq!((s.reference, s.back), (Reference::RunId("3f2b8c1e".into()), 2));
/// assert!("yesterday".parse::<Selector>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Where counting starts.
    pub reference: Reference,
    /// How many comparable records to go back from there.
    pub back: usize,
    /// Only runs of this playbook, when set.
    pub playbook: Option<String>,
}

impl FromStr for Selector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Selector, Error> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "bad audit record selector {s:?}: {why} (expected last, prev, last~N or a run id, optionally followed by :PLAYBOOK, e.g. audit:prev:triage)"
            ))
        };
        let (what, playbook) = match s.trim().split_once(':') {
            Some((w, p)) if p.trim().is_empty() => return Err(bad(&format!("nothing after the ':' in {w:?}:"))),
            Some((w, p)) => (w.trim(), Some(p.trim().to_owned())),
            None => (s.trim(), None),
        };
        let (base, back) = match what.split_once('~') {
            None => (what, 0),
            Some((b, "")) => (b, 1),
            Some((b, n)) => (
                b,
                n.parse::<usize>()
                    .map_err(|_| bad(&format!("{n:?} after '~' is not a count")))?,
            ),
        };
        let lower = base.to_ascii_lowercase();
        let (reference, extra) = match lower.as_str() {
            "last" | "latest" => (Reference::Last, 0),
            "prev" | "previous" => (Reference::Last, 1),
            "" => return Err(bad("it is empty")),
            id if id.len() >= 8 && id.len() <= 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
                (Reference::RunId(id.to_owned()), 0)
            }
            id if id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
                return Err(bad("a run id prefix needs at least 8 characters"));
            }
            _ => return Err(bad(&format!("{base:?} is neither last, prev nor a run id"))),
        };
        let back = back.checked_add(extra).ok_or_else(|| bad("the count is too large"))?;
        Ok(Selector {
            reference,
            back,
            playbook,
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Last if self.back == 1 => f.write_str("prev")?,
            Reference::Last => f.write_str("last")?,
            Reference::RunId(id) => f.write_str(id)?,
        }
        match (&self.reference, self.back) {
            (_, 0) | (Reference::Last, 1) => {}
            (_, n) => write!(f, "~{n}")?,
        }
        if let Some(p) = &self.playbook {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// True when a record's playbook `path` (as given on the command line) is the playbook
/// `filter` names: the same path, or the same file name (`triage.rhai` matches
/// `examples/triage.rhai`), or the same file name without `.rhai` (`triage`). A filter
/// with a `/` must match the end of the path (`examples/triage.rhai`).
pub fn playbook_matches(path: &str, filter: &str) -> bool {
    if path == filter {
        return true;
    }
    if filter.contains('/') {
        return path.ends_with(filter) && path[..path.len() - filter.len()].ends_with('/');
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    name == filter || name.strip_suffix(".rhai") == Some(filter)
}

/// The record files of `dir` (files named like records), newest first.
pub fn record_paths(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut names = list_candidates(dir)?;
    names.retain(|n| n.to_str().and_then(parse_name).is_some());
    Ok(names.into_iter().rev().map(|n| dir.join(n)).collect())
}

/// Reads one audit record file (of any supported schema version).
pub fn read_record(path: &Path) -> Result<AuditRecord, Error> {
    let bad = |reason: String| Error::SavedReport {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::AuditIo {
        what: "cannot read record",
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    match value.get("schema_version").and_then(serde_json::Value::as_u64) {
        Some(v) if (1..=u64::from(SCHEMA_VERSION)).contains(&v) => {}
        Some(v) => {
            return Err(bad(format!(
                "audit record schema_version {v} is not supported (this snat reads 1 to {SCHEMA_VERSION}): upgrade snat"
            )));
        }
        None => return Err(bad("no schema_version: not an audit record".into())),
    }
    serde_json::from_value(value).map_err(|e| bad(format!("not a valid audit record: {e}")))
}

/// Why a record cannot stand for its run's findings, or `None` when it can.
pub(super) fn unusable_reason(record: &AuditRecord) -> Option<String> {
    if !record.holds_findings() {
        return Some(format!(
            "it was written by a snat that did not record findings (schema version {}); pass the JSON report of that run (snat-run --output json), or run the playbook again",
            record.schema_version
        ));
    }
    if record.outcome.kind != OutcomeKind::Completed {
        let kind = serde_json::to_value(record.outcome.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let message = record.outcome.message.as_deref().unwrap_or("no message");
        return Some(format!(
            "the run did not complete ({kind}: {message}), so its findings are partial; pick a completed run (audit:last:PLAYBOOK, audit:prev:PLAYBOOK) or run the playbook again"
        ));
    }
    None
}

/// A record picked by [`select`].
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    /// Its file.
    pub path: PathBuf,
    /// Its content.
    pub record: AuditRecord,
}

/// What was passed over while looking for a record, for the error message.
#[derive(Default)]
struct Skipped {
    other_playbook: usize,
    old_schema: usize,
    not_completed: usize,
    unreadable: usize,
    usable: usize,
}

impl Skipped {
    fn describe(&self, dir: &Path, sel: &Selector, wanted: usize, total: usize) -> String {
        let of = sel
            .playbook
            .as_deref()
            .map_or_else(|| "any playbook".to_owned(), |p| format!("playbook {p:?}"));
        let mut parts = vec![if self.usable == 0 {
            format!("no completed run of {of} with findings")
        } else {
            format!(
                "only {} completed run(s) of {of} with findings, and this asks for the {}",
                self.usable,
                ordinal(wanted + 1)
            )
        }];
        if self.not_completed > 0 {
            parts.push(format!(
                "{} record(s) of runs that did not complete",
                self.not_completed
            ));
        }
        if self.old_schema > 0 {
            parts.push(format!(
                "{} record(s) written before snat recorded findings (schema version 1)",
                self.old_schema
            ));
        }
        if self.other_playbook > 0 {
            parts.push(format!("{} record(s) of other playbooks", self.other_playbook));
        }
        if self.unreadable > 0 {
            parts.push(format!(
                "{} unreadable record(s) (snat-run audit verify tells more)",
                self.unreadable
            ));
        }
        format!(
            "{} among {total} record(s) searched; run the playbook first (every snat-run run leaves a record){}",
            parts.join(", skipped "),
            root_hint(dir, euid())
        )
    }
}

/// Where root's runs record by default (see [`super::default_dir`]).
const ROOT_DIR: &str = "/var/lib/snat/audit";

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// For a user other than root searching a directory other than root's: the records of runs
/// made with `sudo` (triage, census and trace need root) are in root's directory, so say
/// so rather than only "none yet".
fn root_hint(dir: &Path, euid: u32) -> &'static str {
    if euid != 0 && dir != Path::new(ROOT_DIR) {
        "; runs made as root (sudo snat-run ...) record into /var/lib/snat/audit: run this one with sudo too, or pass --audit-dir /var/lib/snat/audit"
    } else {
        ""
    }
}

fn ordinal(n: usize) -> String {
    match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => format!("{n}th"),
        (1, _) => format!("{n}st"),
        (2, _) => format!("{n}nd"),
        (3, _) => format!("{n}rd"),
        _ => format!("{n}th"),
    }
}

/// Picks the record of `dir` that `sel` names.
///
/// `last`, `prev` and `~N` count only records that can be compared: schema version 2 or
/// later (they hold findings), of a completed run, and of `sel.playbook` when set; newest
/// first, by file name (which is chain order). A run id names its record directly: it must
/// be of `sel.playbook` when set, and comparable when no `~N` follows; with `~N`, counting
/// starts at the records before it.
///
/// Errors: [`Error::AuditSelect`] when no record answers (an empty directory, none of that
/// playbook, too few, an unknown or ambiguous run id, a record of another playbook), with
/// what was skipped and why; [`Error::AuditNoFindings`] for a run id whose record cannot
/// be compared; [`Error::AuditIo`] when the directory cannot be listed.
pub fn select(dir: &Path, sel: &Selector) -> Result<Selected, Error> {
    let no = |reason: String| Error::AuditSelect {
        dir: dir.to_path_buf(),
        selector: sel.to_string(),
        reason,
    };
    let paths = record_paths(dir)?;
    if paths.is_empty() {
        return Err(no(format!(
            "the directory holds no records yet: run the playbook first (every snat-run run leaves a record){}",
            root_hint(dir, euid())
        )));
    }
    let (from, wanted) = match &sel.reference {
        Reference::Last => (0, sel.back),
        Reference::RunId(prefix) => {
            let hits: Vec<usize> = paths
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(parse_name)
                        .is_some_and(|(_, id)| id.starts_with(prefix.as_str()))
                })
                .map(|(i, _)| i)
                .collect();
            let i = match hits.as_slice() {
                [] => return Err(no(format!("no record has a run id starting with {prefix}"))),
                [i] => *i,
                many => {
                    return Err(no(format!(
                        "{} records have a run id starting with {prefix}: give more of it",
                        many.len()
                    )));
                }
            };
            if sel.back == 0 || sel.playbook.is_some() {
                let record = read_record(&paths[i])?;
                if let Some(p) = &sel.playbook
                    && !playbook_matches(&record.playbook.path, p)
                {
                    return Err(no(format!(
                        "run {} is of playbook {}, not {p:?}",
                        record.run_id, record.playbook.path
                    )));
                }
                if sel.back == 0 {
                    if let Some(reason) = unusable_reason(&record) {
                        return Err(Error::AuditNoFindings {
                            path: paths[i].clone(),
                            run_id: record.run_id,
                            reason,
                        });
                    }
                    return Ok(Selected {
                        path: paths[i].clone(),
                        record,
                    });
                }
            }
            (i + 1, sel.back - 1)
        }
    };
    let mut skipped = Skipped::default();
    for path in &paths[from..] {
        let Ok(record) = read_record(path) else {
            skipped.unreadable += 1;
            continue;
        };
        if let Some(p) = &sel.playbook
            && !playbook_matches(&record.playbook.path, p)
        {
            skipped.other_playbook += 1;
            continue;
        }
        if !record.holds_findings() {
            skipped.old_schema += 1;
            continue;
        }
        if !record.completed() {
            skipped.not_completed += 1;
            continue;
        }
        if skipped.usable == wanted {
            return Ok(Selected {
                path: path.clone(),
                record,
            });
        }
        skipped.usable += 1;
    }
    Err(no(skipped.describe(dir, sel, wanted, paths.len() - from)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::user_in_own_dir("/home/u/.local/state/snat/audit", 1000, true)]
    #[case::user_in_root_dir("/var/lib/snat/audit", 1000, false)]
    #[case::root("/srv/audit", 0, false)]
    fn root_hint_points_a_user_at_roots_records(#[case] dir: &str, #[case] euid: u32, #[case] hint: bool) {
        let h = root_hint(Path::new(dir), euid);
        assert_eq!(
            h.contains("sudo") && h.contains("--audit-dir /var/lib/snat/audit"),
            hint,
            "{h:?}"
        );
    }

    #[rstest]
    #[case::last("last", Reference::Last, 0, None)]
    #[case::latest("latest", Reference::Last, 0, None)]
    #[case::prev("prev", Reference::Last, 1, None)]
    #[case::prev_upper(" PREV ", Reference::Last, 1, None)]
    #[case::tilde("last~3", Reference::Last, 3, None)]
    #[case::bare_tilde("last~", Reference::Last, 1, None)]
    #[case::prev_tilde("prev~2", Reference::Last, 3, None)]
    #[case::playbook("last:triage.rhai", Reference::Last, 0, Some("triage.rhai"))]
    #[case::run_id("3f2b8c1e", Reference::RunId("3f2b8c1e".into()), 0, None)]
    #[case::run_id_upper("3F2B8C1E-5D4A~1:triage", Reference::RunId("3f2b8c1e-5d4a".into()), 1, Some("triage"))]
    fn selectors_parse(
        #[case] text: &str,
        #[case] reference: Reference,
        #[case] back: usize,
        #[case] playbook: Option<&str>,
    ) {
        let s: Selector = text.parse().unwrap();
        assert_eq!(
            s,
            Selector {
                reference,
                back,
                playbook: playbook.map(str::to_owned)
            }
        );
        assert_eq!(s.to_string().parse::<Selector>().unwrap(), s, "Display round-trips");
    }

    #[rstest]
    #[case::empty("", "it is empty")]
    #[case::word("yesterday", "neither last, prev nor a run id")]
    #[case::short_id("3f2b", "at least 8 characters")]
    #[case::bad_count("last~x", "is not a count")]
    #[case::no_playbook("last:", "nothing after the ':'")]
    #[case::huge("prev~18446744073709551615", "too large")]
    fn bad_selectors_say_why(#[case] text: &str, #[case] why: &str) {
        let e = text.parse::<Selector>().unwrap_err().to_string();
        assert!(e.contains(why) && e.contains("audit:prev:triage"), "{e}");
    }

    #[rstest]
    #[case("examples/triage.rhai", "triage", true)]
    #[case("examples/triage.rhai", "triage.rhai", true)]
    #[case("examples/triage.rhai", "examples/triage.rhai", true)]
    #[case("/opt/snat/examples/triage.rhai", "examples/triage.rhai", true)]
    #[case("examples/triage.rhai", "ples/triage.rhai", false)]
    #[case("examples/verify-fix.rhai", "triage", false)]
    #[case("examples/triage-v2.rhai", "triage", false)]
    #[case("triage", "triage", true)]
    fn playbooks_match_by_file_name(#[case] path: &str, #[case] filter: &str, #[case] want: bool) {
        assert_eq!(playbook_matches(path, filter), want, "{path} ~ {filter}");
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].into_iter().map(ordinal).collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn selector_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Selector>();
        }
    }
}
