//! Counting and ranking TCP events by any subset of their fields.
//!
//! This is the article's `awk '{print $6,$10}' log | sort | uniq -c | sort -nrk 1` as a
//! typed stage: an [`Aggregator`] is told which groupings to keep (for example
//! `(saddr, netns)` and `(netns, daddr, dport)`), is fed [`Record`]s one at a time (tcptracer
//! log lines, live events, or rows the kernel already aggregated), and yields
//! [`Ranking`]s ordered by a [`Metric`], ties broken by key so output is deterministic.
//! Memory grows with the number of distinct keys, never with the number of events.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keytable::{self, KeyTable};
use crate::model::{Direction, EventKind, Family, TcpEvent};

/// A field that events can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// Event kind (tcptracer's `TYPE`; also accepted as `type`).
    Kind,
    /// Process id.
    Pid,
    /// Command name.
    Comm,
    /// Address family (tcptracer's `IP`; also accepted as `ip`), as SNAT sees the
    /// connection: an IPv6 socket connected to an IPv4-mapped address (`::ffff:a.b.c.d`)
    /// is IPv4 here (see [`key_family`]), whatever the socket's own family.
    Family,
    /// Local address. An IPv4-mapped IPv6 address is keyed as the IPv4 address it holds,
    /// so a dual-stack socket and an IPv4 socket land in one row.
    Saddr,
    /// Remote address. An IPv4-mapped IPv6 address (`::ffff:20.1.2.3`, what a dual-stack
    /// socket connecting to an IPv4 destination shows) is keyed as the IPv4 address
    /// (`20.1.2.3`): it uses an IPv4 SNAT port exactly like an IPv4 socket, so both count in
    /// one row, as in the census. Per-event output (tcptracer text, JSON Lines) keeps the
    /// address as the kernel or the log gave it.
    Daddr,
    /// Local port: for an accepted connection, the port the server listens on.
    Sport,
    /// Remote port of a connection this side opened (connects, failed connects, their
    /// closes): the destination port a SNAT port is taken for. For an inbound connection
    /// (accepts, and closes the live tracer knows to be of an accepted connection) it is
    /// missing (`-`, `()` in a playbook, `null` in JSON): the remote port there is the
    /// client's ephemeral port, one row per connection that says nothing about SNAT, and the
    /// live tracer's aggregated mode does not even record it. So a ranking by
    /// `(netns, daddr, dport)` gives the same rows from a tcptracer log, a stream-mode and an
    /// aggregated-mode trace; `sport` of an accept is the listening port. A tcptracer log
    /// does not say which side a close is from, so there a close keeps its DPORT. The
    /// per-event output (tcptracer text, JSON Lines) still carries the remote port.
    Dport,
    /// Network namespace inode.
    Netns,
}

impl Field {
    /// Every field, in tcptracer column order.
    pub const ALL: [Field; 9] = [
        Field::Kind,
        Field::Pid,
        Field::Comm,
        Field::Family,
        Field::Saddr,
        Field::Daddr,
        Field::Sport,
        Field::Dport,
        Field::Netns,
    ];

    /// Lower-case name, as accepted by [`Field::from_str`] and used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Field::Kind => "kind",
            Field::Pid => "pid",
            Field::Comm => "comm",
            Field::Family => "family",
            Field::Saddr => "saddr",
            Field::Daddr => "daddr",
            Field::Sport => "sport",
            Field::Dport => "dport",
            Field::Netns => "netns",
        }
    }

    /// Parse a list of field names, rejecting duplicates and empty lists.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Vec<Field>, Error> {
        if names.is_empty() {
            return Err(Error::InvalidArgument("a grouping needs at least one field".into()));
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let f: Field = n.as_ref().parse()?;
            if out.contains(&f) {
                return Err(Error::InvalidArgument(format!(
                    "field {:?} named twice in one grouping",
                    f.name()
                )));
            }
            out.push(f);
        }
        Ok(out)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Field {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "kind" | "type" => Field::Kind,
            "pid" => Field::Pid,
            "comm" => Field::Comm,
            "family" | "ip" => Field::Family,
            "saddr" => Field::Saddr,
            "daddr" => Field::Daddr,
            "sport" => Field::Sport,
            "dport" => Field::Dport,
            "netns" => Field::Netns,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown field {s:?}: expected one of kind, pid, comm, family, saddr, daddr, sport, dport, netns"
                )));
            }
        })
    }
}

/// The family a ranking keys a connection of the socket family `family` to `daddr` under:
/// IPv4 when `daddr` is an IPv4-mapped IPv6 address (the connection leaves as IPv4), else
/// `family`.
pub fn key_family(family: Family, daddr: &IpAddr) -> Family {
    match daddr {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Family::Ipv4,
        _ => family,
    }
}

/// The value of one [`Field`] of one record.
///
/// Ordering (used to break ties in rankings) is by variant, then by value: numbers
/// numerically, addresses IPv4 before IPv6 and numerically within a family.
///
/// JSON (a ranking row's `key` values): numbers for `pid`, `sport`, `dport` and `netns`,
/// strings for `kind`, `comm` and addresses (IPv4-mapped IPv6 addresses appear as the
/// IPv4 address they hold), `"ipv4"` or `"ipv6"` for `family`, `null` for a value the
/// record does not carry (shown `-` in text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// The record does not carry this field (e.g. a log without a NETNS column).
    Missing,
    /// A number (pid, port, netns inode).
    Int(u64),
    /// An event kind.
    Kind(EventKind),
    /// An address family.
    Family(Family),
    /// An address.
    Ip(IpAddr),
    /// Text (comm).
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Missing => f.write_str("-"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Kind(k) => write!(f, "{k}"),
            Value::Family(fam) => write!(f, "{}", fam.number()),
            Value::Ip(ip) => write!(f, "{ip}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

/// Event counts for one key (or for a whole trace).
///
/// JSON: `events`, `connects`, `accepts`, `closes`, `failed_connects`, `unknown`, `open`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All events (what the article's `uniq -c` counts: every line).
    pub events: u64,
    /// Connects that reached ESTABLISHED.
    pub connects: u64,
    /// Accepted connections.
    pub accepts: u64,
    /// Closes.
    pub closes: u64,
    /// Connects that never reached ESTABLISHED.
    pub failed_connects: u64,
    /// Events of unknown type.
    pub unknown: u64,
    /// Connections still open at the end of the window: for live traces the kernel's
    /// count of connections established in the window and not yet closed; for logs,
    /// `connects + accepts - closes` floored at 0 per key.
    pub open: u64,
}

impl Counts {
    /// The counts one event contributes.
    pub fn of_kind(kind: EventKind) -> Counts {
        let mut c = Counts {
            events: 1,
            ..Counts::default()
        };
        match kind {
            EventKind::Connect => c.connects = 1,
            EventKind::Accept => c.accepts = 1,
            EventKind::Close => c.closes = 1,
            EventKind::FailedConnect => c.failed_connects = 1,
            EventKind::Unknown => c.unknown = 1,
        }
        c
    }

    /// Add `other` into `self` (saturating).
    pub fn add(&mut self, other: &Counts) {
        self.events = self.events.saturating_add(other.events);
        self.connects = self.connects.saturating_add(other.connects);
        self.accepts = self.accepts.saturating_add(other.accepts);
        self.closes = self.closes.saturating_add(other.closes);
        self.failed_connects = self.failed_connects.saturating_add(other.failed_connects);
        self.unknown = self.unknown.saturating_add(other.unknown);
        self.open = self.open.saturating_add(other.open);
    }

    /// The value of one metric.
    pub fn get(&self, m: Metric) -> u64 {
        match m {
            Metric::Events => self.events,
            Metric::Connects => self.connects,
            Metric::Accepts => self.accepts,
            Metric::Closes => self.closes,
            Metric::FailedConnects => self.failed_connects,
            Metric::Open => self.open,
            Metric::Attempts => self.connects.saturating_add(self.failed_connects),
        }
    }
}

/// What a ranking is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// All events (the article's count).
    #[default]
    Events,
    /// Successful connects.
    Connects,
    /// Accepts.
    Accepts,
    /// Closes.
    Closes,
    /// Failed connects.
    FailedConnects,
    /// Connections still open.
    Open,
    /// Outbound connection attempts: connects plus failed connects. Each took a SNAT port
    /// on its way out, so this ranks destinations by the ports they use; inbound rows
    /// (accepts only) are left out.
    Attempts,
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "events" | "count" => Metric::Events,
            "connects" | "connect" => Metric::Connects,
            "accepts" | "accept" => Metric::Accepts,
            "closes" | "close" => Metric::Closes,
            "failed_connects" | "failed" => Metric::FailedConnects,
            "open" => Metric::Open,
            "attempts" | "attempt" => Metric::Attempts,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown metric {s:?}: expected events, connects, accepts, closes, failed_connects, open or attempts"
                )));
            }
        })
    }
}

/// Something that can be counted: one event, or one row that is already a sum.
pub trait Record {
    /// The value of `field`, or `None` when this kind of record cannot carry it at all
    /// (for example the pid of a row the kernel aggregated without pids). A field the
    /// record could carry but does not (a log without NETNS) is `Some(Value::Missing)`.
    fn value(&self, field: Field) -> Option<Value>;
    /// What this record adds to its key's counts.
    fn counts(&self) -> Counts;
}

impl Record for TcpEvent {
    fn value(&self, field: Field) -> Option<Value> {
        Some(match field {
            Field::Kind => Value::Kind(self.kind),
            Field::Pid => Value::Int(u64::from(self.pid)),
            Field::Comm => Value::Text(self.comm.clone()),
            Field::Family => Value::Family(key_family(self.family, &self.daddr)),
            Field::Saddr => Value::Ip(self.saddr.to_canonical()),
            Field::Daddr => Value::Ip(self.daddr.to_canonical()),
            Field::Sport => Value::Int(u64::from(self.sport)),
            Field::Dport if self.direction == Direction::Inbound => Value::Missing,
            Field::Dport => Value::Int(u64::from(self.dport)),
            Field::Netns => self.netns.map_or(Value::Missing, Value::Int),
        })
    }

    fn counts(&self) -> Counts {
        Counts::of_kind(self.kind)
    }
}

/// Counts per key for one grouping.
///
/// Keys are stored compactly (see the `keytable` module): about 64 bytes plus a few per
/// value for each key, so a grouping with millions of keys fits in a few hundred MB.
#[derive(Debug, Clone)]
pub struct Aggregator {
    fields: Vec<Field>,
    table: KeyTable,
    buf: Vec<u8>,
}

impl Aggregator {
    /// A new, empty aggregator grouping by `fields` (in that order).
    pub fn new(fields: Vec<Field>) -> Aggregator {
        Aggregator {
            fields,
            table: KeyTable::default(),
            buf: Vec::new(),
        }
    }

    /// The fields this aggregator groups by.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Number of distinct keys so far.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Count one record. Fails when the record cannot carry one of the grouping's fields.
    pub fn add<R: Record + ?Sized>(&mut self, record: &R) -> Result<(), Error> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for &f in &self.fields {
            match record.value(f) {
                Some(v) => keytable::put_value(&mut buf, &v),
                None => {
                    self.buf = buf;
                    return Err(Error::FieldUnavailable { field: f.name() });
                }
            }
        }
        self.table.add(&buf, &record.counts());
        self.buf = buf;
        Ok(())
    }

    /// Add `counts` to `key` directly (for sources that build keys themselves). The key
    /// must have one value per field, in order.
    pub fn add_key(&mut self, key: Vec<Value>, counts: &Counts) {
        debug_assert_eq!(key.len(), self.fields.len());
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for v in &key {
            keytable::put_value(&mut buf, v);
        }
        self.table.add(&buf, counts);
        self.buf = buf;
    }

    /// An aggregator over `fields` holding `table`, whose keys encode those fields.
    pub(crate) fn from_table(fields: Vec<Field>, mut table: KeyTable) -> Aggregator {
        table.shrink_to_fit();
        Aggregator {
            fields,
            table,
            buf: Vec::new(),
        }
    }

    /// Merge another aggregator over the same fields into this one.
    pub fn merge(&mut self, other: Aggregator) -> Result<(), Error> {
        if other.fields != self.fields {
            return Err(Error::InvalidArgument(
                "cannot merge aggregations over different fields".into(),
            ));
        }
        self.table.merge(&other.table);
        Ok(())
    }

    /// The keys' positions (0 to [`Aggregator::len`] - 1) ranked by `metric`, highest
    /// first, ties broken by key ascending, keys whose metric is zero left out: what
    /// [`Aggregator::ranking`] orders, 4 bytes per row. [`Aggregator::row`] gives a row.
    pub fn order(&self, metric: Metric) -> Vec<u32> {
        let t = &self.table;
        let mut order: Vec<u32> = (0..t.len())
            .filter(|&i| t.counts(i).get(metric) > 0)
            .map(|i| i as u32)
            .collect();
        // Keys are distinct and their encoding sorts as their values do: a total order.
        order.sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            t.counts(b)
                .get(metric)
                .cmp(&t.counts(a).get(metric))
                .then_with(|| t.key(a).cmp(t.key(b)))
        });
        order
    }

    /// The key at position `i` (see [`Aggregator::order`]) with its counts.
    ///
    /// # Panics
    ///
    /// When `i` is not below [`Aggregator::len`].
    pub fn row(&self, i: usize) -> RankRow {
        RankRow {
            key: keytable::decode(self.table.key(i)),
            counts: *self.table.counts(i),
        }
    }

    /// The counts of the key at position `i`.
    ///
    /// # Panics
    ///
    /// When `i` is not below [`Aggregator::len`].
    pub fn counts_at(&self, i: usize) -> &Counts {
        self.table.counts(i)
    }

    /// The ranking by `metric`, highest first, ties broken by key ascending. Keys whose
    /// metric is zero are left out (except for [`Metric::Events`], where none is zero).
    pub fn ranking(&self, metric: Metric) -> Ranking {
        let rows = self.order(metric).into_iter().map(|i| self.row(i as usize)).collect();
        Ranking {
            fields: self.fields.clone(),
            metric,
            rows,
        }
    }
}

fn rank_order(a: &RankRow, b: &RankRow, metric: Metric) -> Ordering {
    b.counts
        .get(metric)
        .cmp(&a.counts.get(metric))
        .then_with(|| a.key.cmp(&b.key))
}

/// Rows keyed by `have` added up by `want` (each one of `have`) and ranked by `metric`:
/// [`Ranking::regroup`] and [`RankView::regroup`]. Errors when a field of `want` is not
/// one of `have`.
fn regroup_rows<R: std::borrow::Borrow<RankRow>>(
    have: &[Field],
    want: &[Field],
    metric: Metric,
    rows: impl Iterator<Item = R>,
) -> Result<Ranking, Error> {
    let at: Vec<usize> = want
        .iter()
        .map(|f| {
            have.iter().position(|g| g == f).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "cannot sum a ranking by {f}: it is grouped by [{}]",
                    have.iter().map(|g| g.name()).collect::<Vec<_>>().join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let mut sums = Aggregator::new(want.to_vec());
    for r in rows {
        let r = r.borrow();
        sums.add_key(at.iter().map(|i| r.key[*i].clone()).collect(), &r.counts);
    }
    Ok(sums.ranking(metric))
}

/// One row of a ranking.
///
/// JSON: `key` (an object field name -> value, in grouping order) and `counts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankRow {
    /// One value per grouping field, in the grouping's order.
    pub key: Vec<Value>,
    /// Counts for that key.
    pub counts: Counts,
}

/// Keys ranked by a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranking {
    /// The grouping's fields.
    pub fields: Vec<Field>,
    /// What the rows are ordered by.
    pub metric: Metric,
    /// Rows, highest first.
    pub rows: Vec<RankRow>,
}

impl Ranking {
    /// The rows `keep` accepts, in the same order.
    pub fn retain(&self, mut keep: impl FnMut(&Ranking, &RankRow) -> bool) -> Ranking {
        Ranking {
            fields: self.fields.clone(),
            metric: self.metric,
            rows: self.rows.iter().filter(|r| keep(self, r)).cloned().collect(),
        }
    }

    /// The rows added up by `fields`, each one of this ranking's fields (for example a
    /// ranking by `(netns, daddr, dport)` summed by `netns`), ranked again by the same
    /// metric. Errors when a field is not one of the ranking's.
    pub fn regroup(&self, fields: &[Field]) -> Result<Ranking, Error> {
        regroup_rows(&self.fields, fields, self.metric, self.rows.iter())
    }

    /// The value of `field` in `row`, if the ranking groups by it.
    pub fn value<'a>(&self, row: &'a RankRow, field: Field) -> Option<&'a Value> {
        self.fields.iter().position(|f| *f == field).map(|i| &row.key[i])
    }

    /// The first `n` rows.
    pub fn top(&self, n: usize) -> Ranking {
        Ranking {
            fields: self.fields.clone(),
            metric: self.metric,
            rows: self.rows.iter().take(n).cloned().collect(),
        }
    }

    /// The same rows ordered by another metric (rows where it is zero are dropped).
    pub fn by(&self, metric: Metric) -> Ranking {
        let mut rows: Vec<RankRow> = self.rows.iter().filter(|r| r.counts.get(metric) > 0).cloned().collect();
        rows.sort_by(|a, b| rank_order(a, b, metric));
        Ranking {
            fields: self.fields.clone(),
            metric,
            rows,
        }
    }

    /// Total of the rows' counts.
    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for r in &self.rows {
            t.add(&r.counts);
        }
        t
    }

    /// The ranking as the article's pipeline prints it: a header (`Count` then the field
    /// names in upper case) and one line per row, columns aligned.
    pub fn to_text(&self) -> String {
        let mut lines: Vec<Vec<String>> = Vec::with_capacity(self.rows.len() + 1);
        let mut header = vec!["Count".to_string()];
        header.extend(self.fields.iter().map(|f| f.name().to_ascii_uppercase()));
        lines.push(header);
        for r in &self.rows {
            let mut l = vec![r.counts.get(self.metric).to_string()];
            l.extend(r.key.iter().map(|v| v.to_string()));
            lines.push(l);
        }
        let cols = self.fields.len() + 1;
        let widths: Vec<usize> = (0..cols)
            .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for l in &lines {
            let mut s = String::new();
            for (i, cell) in l.iter().enumerate() {
                if i + 1 == cols {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        }
        out
    }
}

impl Serialize for RankRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RankRow", 2)?;
        st.serialize_field("key", &self.key)?;
        st.serialize_field("counts", &self.counts)?;
        st.end()
    }
}

impl Serialize for Ranking {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let key: serde_json::Map<String, serde_json::Value> = self
                    .fields
                    .iter()
                    .zip(&r.key)
                    .map(|(f, v)| {
                        (
                            f.name().to_string(),
                            serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                        )
                    })
                    .collect();
                serde_json::json!({ "key": key, "count": r.counts.get(self.metric), "counts": r.counts })
            })
            .collect();
        let mut st = s.serialize_struct("Ranking", 3)?;
        st.serialize_field("fields", &self.fields)?;
        st.serialize_field("metric", &self.metric)?;
        st.serialize_field("rows", &rows)?;
        st.end()
    }
}

/// The outcome of consuming one trace (a log or a live window): totals, loss accounting,
/// and one aggregation per requested grouping.
#[derive(Debug, Clone)]
pub struct TraceSummary {
    /// Where the events came from (a path, `-` for stdin, `live`).
    pub source: String,
    /// Counts over all events.
    pub totals: Counts,
    /// Events the producer says it lost (tcptracer's `Possibly lost N samples`, or the
    /// live tracer's kernel drop counter). Never silently zero: a source that cannot know
    /// says so in `notes`.
    pub lost_events: u64,
    /// Input lines that could not be parsed (logs only).
    pub malformed_lines: u64,
    /// Human-readable remarks about the trace (first malformed lines with their numbers,
    /// attribution caveats, ...).
    pub notes: Vec<String>,
    /// One aggregation per grouping.
    pub groupings: Vec<Aggregator>,
}

impl TraceSummary {
    /// An empty summary keeping the given groupings.
    pub fn new(source: impl Into<String>, groupings: Vec<Vec<Field>>) -> TraceSummary {
        TraceSummary {
            source: source.into(),
            totals: Counts::default(),
            lost_events: 0,
            malformed_lines: 0,
            notes: Vec::new(),
            groupings: groupings.into_iter().map(Aggregator::new).collect(),
        }
    }

    /// The default groupings: the article's `(saddr, netns)` and the per-destination
    /// `(netns, daddr, dport)`.
    pub fn default_groupings() -> Vec<Vec<Field>> {
        vec![
            vec![Field::Saddr, Field::Netns],
            vec![Field::Netns, Field::Daddr, Field::Dport],
        ]
    }

    /// Count one record into the totals and every grouping.
    pub fn add<R: Record + ?Sized>(&mut self, record: &R) -> Result<(), Error> {
        for g in &mut self.groupings {
            g.add(record)?;
        }
        self.totals.add(&record.counts());
        Ok(())
    }

    /// The position of the kept grouping over `fields` (in any order).
    fn grouping(&self, fields: &[Field]) -> Result<usize, Error> {
        self.groupings
            .iter()
            .position(|g| g.fields().len() == fields.len() && fields.iter().all(|f| g.fields().contains(f)))
            .ok_or_else(|| Error::GroupingNotKept {
                fields: fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
                kept: self
                    .groupings
                    .iter()
                    .map(|g| {
                        format!(
                            "[{}]",
                            g.fields().iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            })
    }

    /// The ranking for a grouping that was requested, matched by its fields in any order
    /// (the key comes back in the order asked for).
    pub fn rank(&self, fields: &[Field], metric: Metric) -> Result<Ranking, Error> {
        let g = &self.groupings[self.grouping(fields)?];
        let mut r = g.ranking(metric);
        if g.fields() != fields {
            let order: Vec<usize> = fields
                .iter()
                .map(|f| g.fields().iter().position(|x| x == f).unwrap_or(0))
                .collect();
            for row in &mut r.rows {
                row.key = order.iter().map(|&i| row.key[i].clone()).collect();
            }
            r.fields = fields.to_vec();
            r.rows.sort_by(|a, b| rank_order(a, b, metric));
        }
        Ok(r)
    }

    /// The same ranking as [`TraceSummary::rank`], as a [`RankView`]: the rows stay in the
    /// summary and are made one at a time, so a ranking of millions of keys costs 4 bytes
    /// per row instead of a copy of each key.
    pub fn rank_view(self: &Arc<Self>, fields: &[Field], metric: Metric) -> Result<RankView, Error> {
        let at = self.grouping(fields)?;
        let g = &self.groupings[at];
        let perm: Option<Vec<usize>> = (g.fields() != fields).then(|| {
            fields
                .iter()
                .map(|f| g.fields().iter().position(|x| x == f).unwrap_or(0))
                .collect()
        });
        let mut order = g.order(metric);
        if let Some(p) = &perm {
            // Ties are broken by the key in the order asked for.
            order.sort_by_cached_key(|&i| {
                let key = g.row(i as usize).key;
                (
                    std::cmp::Reverse(g.counts_at(i as usize).get(metric)),
                    p.iter().map(|&j| key[j].clone()).collect::<Vec<_>>(),
                )
            });
        }
        Ok(RankView {
            summary: self.clone(),
            grouping: at,
            fields: fields.to_vec(),
            perm,
            metric,
            order,
        })
    }
}

/// A [`Ranking`] whose rows stay in their [`TraceSummary`]: 4 bytes per row, each row
/// made when it is asked for ([`RankView::row`], [`RankView::rows`]), the same rows in the
/// same order as [`TraceSummary::rank`] gives.
#[derive(Debug, Clone)]
pub struct RankView {
    summary: Arc<TraceSummary>,
    grouping: usize,
    fields: Vec<Field>,
    /// For each field asked for, its position in the grouping's key (when they differ).
    perm: Option<Vec<usize>>,
    metric: Metric,
    order: Vec<u32>,
}

impl RankView {
    /// The fields, in the order asked for.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// What the rows are ordered by.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn agg(&self) -> &Aggregator {
        &self.summary.groupings[self.grouping]
    }

    fn make(&self, i: u32) -> RankRow {
        let mut row = self.agg().row(i as usize);
        if let Some(p) = &self.perm {
            row.key = p.iter().map(|&j| row.key[j].clone()).collect();
        }
        row
    }

    /// Row `n` (0 is the highest), if there are that many.
    pub fn row(&self, n: usize) -> Option<RankRow> {
        self.order.get(n).map(|&i| self.make(i))
    }

    /// The rows, highest first, made one at a time.
    pub fn rows(&self) -> impl Iterator<Item = RankRow> + '_ {
        self.order.iter().map(|&i| self.make(i))
    }

    /// The first `n` rows, as a [`Ranking`].
    pub fn top(&self, n: usize) -> Ranking {
        Ranking {
            fields: self.fields.clone(),
            metric: self.metric,
            rows: self.rows().take(n).collect(),
        }
    }

    /// Every row, as a [`Ranking`].
    pub fn to_ranking(&self) -> Ranking {
        self.top(self.len())
    }

    /// The rows `keep` accepts, in the same order (see [`Ranking::retain`]).
    pub fn retain(&self, mut keep: impl FnMut(&[Field], &RankRow) -> bool) -> RankView {
        RankView {
            order: self
                .order
                .iter()
                .copied()
                .filter(|&i| keep(&self.fields, &self.make(i)))
                .collect(),
            ..self.clone_empty()
        }
    }

    /// The same rows ordered by another metric, rows where it is zero dropped (see
    /// [`Ranking::by`]).
    pub fn by(&self, metric: Metric) -> RankView {
        let agg = self.agg();
        let mut order: Vec<u32> = self
            .order
            .iter()
            .copied()
            .filter(|&i| agg.counts_at(i as usize).get(metric) > 0)
            .collect();
        if self.perm.is_some() {
            // Ties by the key in the order asked for.
            let mut keyed: Vec<(u64, RankRow, u32)> = order
                .iter()
                .map(|&i| (agg.counts_at(i as usize).get(metric), self.make(i), i))
                .collect();
            keyed.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key)));
            order = keyed.into_iter().map(|k| k.2).collect();
        } else {
            order.sort_unstable_by(|&a, &b| {
                let (a, b) = (a as usize, b as usize);
                agg.counts_at(b)
                    .get(metric)
                    .cmp(&agg.counts_at(a).get(metric))
                    .then_with(|| agg.table.key(a).cmp(agg.table.key(b)))
            });
        }
        RankView {
            metric,
            order,
            ..self.clone_empty()
        }
    }

    /// The rows added up by `fields` (see [`Ranking::regroup`]).
    pub fn regroup(&self, fields: &[Field]) -> Result<Ranking, Error> {
        regroup_rows(&self.fields, fields, self.metric, self.rows())
    }

    /// The view's settings without its rows.
    fn clone_empty(&self) -> RankView {
        RankView {
            summary: self.summary.clone(),
            grouping: self.grouping,
            fields: self.fields.clone(),
            perm: self.perm.clone(),
            metric: self.metric,
            order: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Clock;

    fn ev(kind: EventKind, saddr: &str, daddr: &str, netns: Option<u64>) -> TcpEvent {
        TcpEvent {
            time_ns: None,
            clock: Clock::Relative,
            kind,
            direction: kind.direction(),
            pid: 1,
            comm: "c".into(),
            family: Family::Ipv4,
            saddr: saddr.parse().unwrap(),
            daddr: daddr.parse().unwrap(),
            sport: 1,
            dport: 80,
            netns,
            cgroup_id: None,
            prev_state: None,
            duration_ns: None,
            error: None,
        }
    }

    #[test]
    fn ranks_by_count_then_key() {
        let mut s = TraceSummary::new("t", TraceSummary::default_groupings());
        for _ in 0..3 {
            s.add(&ev(EventKind::Connect, "10.0.0.2", "1.1.1.1", Some(5))).unwrap();
        }
        s.add(&ev(EventKind::Close, "10.0.0.9", "1.1.1.1", Some(5))).unwrap();
        s.add(&ev(EventKind::Close, "10.0.0.1", "1.1.1.1", Some(5))).unwrap();
        let r = s.rank(&[Field::Saddr, Field::Netns], Metric::Events).unwrap();
        let keys: Vec<String> = r.rows.iter().map(|r| r.key[0].to_string()).collect();
        assert_eq!(keys, ["10.0.0.2", "10.0.0.1", "10.0.0.9"]);
        assert_eq!(r.rows[0].counts.connects, 3);
        assert_eq!(s.totals.events, 5);
        // Field order given differently: same grouping, key reordered.
        let r2 = s.rank(&[Field::Netns, Field::Saddr], Metric::Events).unwrap();
        assert_eq!(
            r2.rows[0].key,
            vec![Value::Int(5), Value::Ip("10.0.0.2".parse().unwrap())]
        );
        assert!(s.rank(&[Field::Pid], Metric::Events).is_err());
        assert_eq!(r.by(Metric::Closes).rows.len(), 2);
    }

    /// A ranking by (netns, daddr) filtered and summed by netns: what tcptracer-log.rhai
    /// does for the namespaces that spend SNAT ports, in Rust.
    #[test]
    fn retain_and_regroup_sum_rows_by_a_subset() {
        let mut s = TraceSummary::new("t", vec![vec![Field::Netns, Field::Daddr]]);
        for (daddr, netns, n) in [
            ("1.1.1.1", 5, 3),
            ("10.0.0.1", 5, 9),
            ("2.2.2.2", 5, 2),
            ("1.1.1.1", 7, 4),
        ] {
            for _ in 0..n {
                s.add(&ev(EventKind::Connect, "10.244.0.2", daddr, Some(netns)))
                    .unwrap();
            }
        }
        let r = s.rank(&[Field::Netns, Field::Daddr], Metric::Connects).unwrap();
        let public = r.retain(|rk, row| rk.value(row, Field::Daddr) != Some(&Value::Ip("10.0.0.1".parse().unwrap())));
        assert_eq!(public.rows.len(), 3);
        let by_ns = public.regroup(&[Field::Netns]).unwrap();
        assert_eq!(by_ns.fields, vec![Field::Netns]);
        let got: Vec<(Value, u64)> = by_ns
            .rows
            .iter()
            .map(|r| (r.key[0].clone(), r.counts.connects))
            .collect();
        assert_eq!(got, vec![(Value::Int(5), 5), (Value::Int(7), 4)]);
        // Unfiltered, netns 5 leads with the private destination's 9.
        assert_eq!(r.regroup(&[Field::Netns]).unwrap().rows[0].counts.connects, 14);
        let err = r.regroup(&[Field::Dport]).unwrap_err().to_string();
        assert!(
            err.contains("cannot sum a ranking by dport") && err.contains("netns, daddr"),
            "{err}"
        );
    }

    #[rstest::rstest]
    #[case::events("events", Metric::Events)]
    #[case::count_alias("Count", Metric::Events)]
    #[case::connects("connects", Metric::Connects)]
    #[case::accept_singular("accept", Metric::Accepts)]
    #[case::closes("closes", Metric::Closes)]
    #[case::failed_dash("failed-connects", Metric::FailedConnects)]
    #[case::failed_short("failed", Metric::FailedConnects)]
    #[case::open(" open ", Metric::Open)]
    #[case::attempts("ATTEMPTS", Metric::Attempts)]
    fn metric_names_parse(#[case] name: &str, #[case] want: Metric) {
        assert_eq!(name.parse::<Metric>().unwrap(), want);
    }

    #[test]
    fn unknown_metric_names_the_choices() {
        let e = "ports".parse::<Metric>().unwrap_err().to_string();
        assert!(e.contains("\"ports\"") && e.contains("attempts"), "{e}");
    }

    /// Attempts are connects plus failed connects; a destination reached only by accepts
    /// (an inbound row) is not in the ranking.
    #[test]
    fn attempts_rank_outbound_destinations_only() {
        let mut a = Aggregator::new(vec![Field::Daddr]);
        for _ in 0..2 {
            a.add(&ev(EventKind::Connect, "10.0.0.2", "1.1.1.1", Some(5))).unwrap();
        }
        for _ in 0..3 {
            a.add(&ev(EventKind::FailedConnect, "10.0.0.2", "2.2.2.2", Some(5)))
                .unwrap();
        }
        a.add(&ev(EventKind::Connect, "10.0.0.2", "2.2.2.2", Some(5))).unwrap();
        for _ in 0..9 {
            a.add(&ev(EventKind::Accept, "10.0.0.2", "3.3.3.3", Some(5))).unwrap();
        }
        let r = a.ranking(Metric::Attempts);
        let rows: Vec<(String, u64)> = r
            .rows
            .iter()
            .map(|row| (row.key[0].to_string(), row.counts.get(Metric::Attempts)))
            .collect();
        assert_eq!(rows, [("2.2.2.2".to_string(), 4), ("1.1.1.1".to_string(), 2)]);
    }

    #[test]
    fn text_output_matches_article_shape() {
        let mut a = Aggregator::new(vec![Field::Saddr, Field::Netns]);
        a.add(&ev(EventKind::Connect, "1.2.3.4", "5.6.7.8", Some(4026532785)))
            .unwrap();
        a.add(&ev(EventKind::Close, "1.2.3.4", "5.6.7.8", Some(4026532785)))
            .unwrap();
        let t = a.ranking(Metric::Events).to_text();
        assert_eq!(t, "Count  SADDR    NETNS\n2      1.2.3.4  4026532785\n");
    }

    proptest::proptest! {
        /// A connection from an IPv4 address to another, made once from an IPv4 socket
        /// and once from a dual-stack IPv6 socket (addresses IPv4-mapped), lands in one row
        /// of every grouping, keyed by the IPv4 addresses, with the counts summed.
        #[test]
        fn ipv4_mapped_addresses_rank_with_ipv4(
            local in proptest::prelude::any::<[u8; 4]>(),
            remote in proptest::prelude::any::<[u8; 4]>(),
            as_v4 in 1u64..20,
            as_mapped in 1u64..20,
        ) {
            let (l4, r4) = (std::net::Ipv4Addr::from(local), std::net::Ipv4Addr::from(remote));
            let v4 = ev(EventKind::Connect, &l4.to_string(), &r4.to_string(), Some(5));
            let mapped = TcpEvent {
                family: Family::Ipv6,
                saddr: IpAddr::V6(l4.to_ipv6_mapped()),
                daddr: IpAddr::V6(r4.to_ipv6_mapped()),
                ..v4.clone()
            };
            let groupings = [
                vec![Field::Daddr],
                vec![Field::Saddr, Field::Netns],
                vec![Field::Netns, Field::Daddr, Field::Dport],
                vec![Field::Family, Field::Saddr, Field::Daddr],
            ];
            for fields in groupings {
                let mut a = Aggregator::new(fields.clone());
                for _ in 0..as_v4 {
                    a.add(&v4).unwrap();
                }
                for _ in 0..as_mapped {
                    a.add(&mapped).unwrap();
                }
                let r = a.ranking(Metric::Connects);
                proptest::prop_assert_eq!(r.rows.len(), 1, "{:?}", fields);
                proptest::prop_assert_eq!(r.rows[0].counts.connects, as_v4 + as_mapped);
                for (f, v) in fields.iter().zip(&r.rows[0].key) {
                    let want = match f {
                        Field::Saddr => Value::Ip(IpAddr::V4(l4)),
                        Field::Daddr => Value::Ip(IpAddr::V4(r4)),
                        Field::Family => Value::Family(Family::Ipv4),
                        other => v4.value(*other).unwrap(),
                    };
                    proptest::prop_assert_eq!(v, &want);
                }
            }
        }
    }

    proptest::proptest! {
        /// A view of a ranking has the rows `rank` gives, in the same order, for any metric
        /// and either field order, also re-ordered by another metric, filtered and summed.
        #[test]
        fn a_rank_view_gives_the_rows_rank_gives(
            events in proptest::collection::vec((0u8..4, 0u8..5, 0u8..3, 0u64..3), 0..60),
            metric in 0usize..4,
            other in 0usize..4,
        ) {
            let metrics = [Metric::Events, Metric::Connects, Metric::Closes, Metric::Attempts];
            let (metric, other) = (metrics[metric], metrics[other]);
            let kinds = [EventKind::Connect, EventKind::Close, EventKind::Accept, EventKind::FailedConnect];
            let mut s = TraceSummary::new("t", vec![vec![Field::Netns, Field::Daddr, Field::Dport]]);
            for (k, d, v6, ns) in events {
                let daddr = if v6 == 2 { format!("2001:db8::{d}") } else { format!("20.0.0.{d}") };
                let mut e = ev(kinds[usize::from(k)], "10.0.0.1", &daddr, (ns > 0).then_some(ns));
                e.dport = 80 + u16::from(d % 2);
                s.add(&e).unwrap();
            }
            let s = Arc::new(s);
            for fields in [
                vec![Field::Netns, Field::Daddr, Field::Dport],
                vec![Field::Dport, Field::Netns, Field::Daddr],
            ] {
                let want = s.rank(&fields, metric).unwrap();
                let view = s.rank_view(&fields, metric).unwrap();
                proptest::prop_assert_eq!(&view.to_ranking(), &want);
                proptest::prop_assert_eq!(view.top(3), want.top(3));
                proptest::prop_assert_eq!(view.by(other).to_ranking(), want.by(other));
                let odd = |row: &RankRow| row.counts.events % 2 == 1;
                let kept = view.retain(|_, r| odd(r));
                proptest::prop_assert_eq!(kept.to_ranking(), want.retain(|_, r| odd(r)));
                proptest::prop_assert_eq!(
                    kept.regroup(&[Field::Netns]).unwrap(),
                    want.retain(|_, r| odd(r)).regroup(&[Field::Netns]).unwrap()
                );
            }
        }
    }

    /// Only IPv4-mapped addresses are folded: other IPv6 addresses, IPv4-compatible ones
    /// (`::a.b.c.d`) included, keep their own rows and family.
    #[rstest::rstest]
    #[case::mapped("::ffff:20.1.2.3", "20.1.2.3", Family::Ipv4)]
    #[case::compatible("::20.1.2.3", "::20.1.2.3", Family::Ipv6)]
    #[case::global("2001:db8::5", "2001:db8::5", Family::Ipv6)]
    fn only_mapped_addresses_become_ipv4(#[case] daddr: &str, #[case] key: &str, #[case] family: Family) {
        let e = TcpEvent {
            family: Family::Ipv6,
            ..ev(EventKind::Connect, "::1", daddr, None)
        };
        assert_eq!(e.value(Field::Daddr), Some(Value::Ip(key.parse().unwrap())));
        assert_eq!(e.value(Field::Family), Some(Value::Family(family)));
    }

    /// `dport` is the destination port of what this side opened, missing for inbound
    /// connections (the client's port); `sport` stays the local port.
    #[rstest::rstest]
    #[case::connect(EventKind::Connect, Direction::Outbound, Value::Int(80))]
    #[case::failed(EventKind::FailedConnect, Direction::Outbound, Value::Int(80))]
    #[case::accept(EventKind::Accept, Direction::Inbound, Value::Missing)]
    #[case::close_of_an_accepted_connection(EventKind::Close, Direction::Inbound, Value::Missing)]
    #[case::close_of_an_outbound_connection(EventKind::Close, Direction::Outbound, Value::Int(80))]
    #[case::close_of_unknown_direction(EventKind::Close, Direction::Unknown, Value::Int(80))]
    fn dport_is_missing_for_inbound_connections(
        #[case] kind: EventKind,
        #[case] direction: Direction,
        #[case] want: Value,
    ) {
        let e = TcpEvent {
            direction,
            ..ev(kind, "10.0.0.2", "10.0.0.3", Some(5))
        };
        assert_eq!(e.value(Field::Dport), Some(want));
        assert_eq!(e.value(Field::Sport), Some(Value::Int(1)));
    }

    #[test]
    fn field_names_parse() {
        assert_eq!(
            Field::parse_list(&["TYPE", "ip", "netns"]).unwrap(),
            vec![Field::Kind, Field::Family, Field::Netns]
        );
        assert!(Field::parse_list(&["saddr", "saddr"]).is_err());
        assert!(Field::parse_list::<&str>(&[]).is_err());
        assert!("bogus".parse::<Field>().is_err());
    }
}
