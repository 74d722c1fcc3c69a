//! Azure Monitor SNAT metrics: the article's Step 1 ("locate the node that experiences SNAT
//! port exhaustion") as a stage.
//!
//! [`parse`] reads the JSON of either `az monitor metrics list -o json` or the Azure Monitor
//! REST API (`Microsoft.Insights/metrics`, 2018-01-01): the two differ in key order, interval
//! spelling (`0:01:00` versus `PT1M`), timestamp suffixes and extra keys, and the REST API
//! returns dimension names in lowercase, so dimension names are matched case-insensitively.
//! [`analyze`] turns a load balancer's `AllocatedSnatPorts`, `UsedSnatPorts` and
//! `SnatConnectionCount` (split by `BackendIPAddress`, and by `ConnectionState` for the
//! latter) into one row per backend IP (a node IP), ranked by peak used/allocated ratio and
//! by failed connections over the window. NAT gateway metrics are recognised too; they have no
//! per-node dimension, and the analysis says so: the node then has to be found by a census
//! of every node.
//!
//! [`az_commands`] builds the exact `az monitor metrics list` command lines, and
//! [`fetch_with_az`] runs them when `az` is on `PATH` (it is never required: a metrics file
//! works the same).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::model::Severity;

/// Which tool produced a metrics document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavour {
    /// `az monitor metrics list -o json` (interval `0:01:00`, timestamps ending `+00:00`).
    AzCli,
    /// The Azure Monitor REST API (interval `PT1M`, timestamps ending `Z`).
    Rest,
}

/// The kind of Azure resource the metrics are about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum ResourceKind {
    /// `Microsoft.Network/loadBalancers` (AKS `outboundType: loadBalancer`).
    LoadBalancer,
    /// `Microsoft.Network/natGateways` (AKS managed or user-assigned NAT gateway).
    NatGateway,
    /// Anything else: the namespace as given.
    Other(String),
}

/// One data point (one time grain). Aggregations that were not requested are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Start of the grain, as the document spelled it.
    pub timestamp: String,
    /// `average`.
    pub average: Option<f64>,
    /// `minimum`.
    pub minimum: Option<f64>,
    /// `maximum`.
    pub maximum: Option<f64>,
    /// `total`.
    pub total: Option<f64>,
    /// `count`.
    pub count: Option<f64>,
}

/// One time series: the points of one combination of dimension values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Dimension values by dimension name, names in lowercase (e.g. `backendipaddress`).
    pub dimensions: BTreeMap<String, String>,
    /// The points, in document order.
    pub points: Vec<Point>,
}

impl Series {
    /// The value of a dimension, by case-insensitive name.
    pub fn dimension(&self, name: &str) -> Option<&str> {
        self.dimensions.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// One metric of the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Metric name as returned (`name.value`), e.g. `UsedSnatPorts`.
    pub name: String,
    /// Unit, e.g. `Count`.
    pub unit: Option<String>,
    /// `errorCode` when it is not `Success`.
    pub error: Option<String>,
    /// The series.
    pub series: Vec<Series>,
}

/// A parsed metrics document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsDoc {
    /// Where it was read from (a path, `-`, or the `az` command), for messages.
    pub source: String,
    /// Which tool produced it.
    pub flavour: Flavour,
    /// The resource kind (from `namespace`, else from the metric ids).
    pub resource: ResourceKind,
    /// `timespan`, e.g. `2024-06-01T10:00:00Z/2024-06-01T11:00:00Z`.
    pub timespan: Option<String>,
    /// `interval` as spelled (`PT1M` or `0:01:00`).
    pub interval: Option<String>,
    /// The metrics.
    pub metrics: Vec<Metric>,
}

impl MetricsDoc {
    /// The metric with this name (case-insensitive).
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name.eq_ignore_ascii_case(name))
    }

    /// Append the metrics of another document about the same resource (two `az` calls).
    pub fn merge(&mut self, other: MetricsDoc) {
        if matches!(self.resource, ResourceKind::Other(_)) {
            self.resource = other.resource.clone();
        }
        if self.timespan.is_none() {
            self.timespan = other.timespan;
        }
        self.metrics.extend(other.metrics);
    }
}

/// Read several metrics files about one resource (the port metrics and
/// `SnatConnectionCount` come from two `az` calls) as one document. An error names the
/// file; files about different kinds of resource (a load balancer and a NAT gateway) are
/// refused.
pub fn read_paths(paths: &[&Path]) -> Result<MetricsDoc, Error> {
    let mut doc: Option<MetricsDoc> = None;
    for path in paths {
        let part = read_path(path)?;
        match &mut doc {
            None => doc = Some(part),
            Some(d) => {
                let known = |r: &ResourceKind| !matches!(r, ResourceKind::Other(_));
                if known(&d.resource) && known(&part.resource) && d.resource != part.resource {
                    return Err(Error::InvalidArgument(format!(
                        "{} and {} are metrics of different kinds of resource ({:?} and {:?}): pass the files of one load balancer",
                        d.source, part.source, d.resource, part.resource
                    )));
                }
                // The same metric twice (a file given twice, or overlapping queries) would
                // be added up per timestamp: twice the ports, twice the failures.
                if let Some(m) = part.metrics.iter().find(|m| d.metric(&m.name).is_some()) {
                    return Err(Error::InvalidArgument(format!(
                        "metric {} is in both {} and {}: pass each metric once",
                        m.name, d.source, part.source
                    )));
                }
                d.source = format!("{} + {}", d.source, part.source);
                d.merge(part);
            }
        }
    }
    doc.ok_or_else(|| Error::InvalidArgument("no metrics file given".into()))
}

fn bad(source: &str, path: &str, problem: impl Into<String>) -> Error {
    Error::MetricsFormat {
        source_name: source.to_string(),
        path: path.to_string(),
        problem: problem.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn get_str<'a>(src: &str, obj: &'a Value, path: &str, key: &str) -> Result<Option<&'a str>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(
            src,
            &format!("{path}.{key}"),
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

fn get_array<'a>(src: &str, obj: &'a Value, path: &str, key: &str) -> Result<&'a [Value], Error> {
    match obj.get(key) {
        Some(Value::Array(a)) => Ok(a),
        None => Err(bad(src, path, format!("missing `{key}` (an array)"))),
        Some(v) => Err(bad(
            src,
            &format!("{path}.{key}"),
            format!("expected an array, got {}", type_name(v)),
        )),
    }
}

fn get_num(src: &str, obj: &Value, path: &str, key: &str) -> Result<Option<f64>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(bad(
            src,
            &format!("{path}.{key}"),
            format!("expected a number, got {}", type_name(v)),
        )),
    }
}

/// A `{value, localizedValue}` name object, or (leniently) a plain string.
fn name_of(src: &str, obj: &Value, path: &str) -> Result<String, Error> {
    match obj.get("name") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(n @ Value::Object(_)) => match get_str(src, n, &format!("{path}.name"), "value")? {
            Some(s) => Ok(s.to_string()),
            None => Err(bad(
                src,
                &format!("{path}.name"),
                "missing `value` (the metric or dimension name)",
            )),
        },
        None | Some(Value::Null) => Err(bad(src, path, "missing `name`")),
        Some(v) => Err(bad(
            src,
            &format!("{path}.name"),
            format!("expected an object, got {}", type_name(v)),
        )),
    }
}

fn kind_of(namespace: Option<&str>, ids: &[&str]) -> ResourceKind {
    let probe = |s: &str| {
        let l = s.to_ascii_lowercase();
        if l.contains("microsoft.network/loadbalancers") || l.contains("/loadbalancers/") {
            Some(ResourceKind::LoadBalancer)
        } else if l.contains("microsoft.network/natgateways") || l.contains("/natgateways/") {
            Some(ResourceKind::NatGateway)
        } else {
            None
        }
    };
    if let Some(k) = namespace.and_then(probe) {
        return k;
    }
    if let Some(k) = ids.iter().find_map(|i| probe(i)) {
        return k;
    }
    ResourceKind::Other(namespace.unwrap_or("unknown").to_string())
}

/// Parse a metrics document (either flavour). `source` names it in errors (a path or `-`).
///
/// Errors name the JSON path of the problem (e.g. `$.value[1].timeseries[0].data[2].average`)
/// and what was expected there.
pub fn parse(text: &str, source: &str) -> Result<MetricsDoc, Error> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        bad(
            source,
            "$",
            format!("not JSON (line {}, column {}): {e}", e.line(), e.column()),
        )
    })?;
    if !root.is_object() {
        return Err(bad(
            source,
            "$",
            format!(
                "expected an object with `value` (the output of `az monitor metrics list -o json`), got {}",
                type_name(&root)
            ),
        ));
    }
    let namespace = get_str(source, &root, "$", "namespace")?;
    let timespan = get_str(source, &root, "$", "timespan")?.map(str::to_string);
    let interval = get_str(source, &root, "$", "interval")?.map(str::to_string);
    let values = get_array(source, &root, "$", "value")?;
    let mut az_hints = root.get("resourceregion").is_some() && values.iter().any(|m| m.get("resourceGroup").is_some());
    if let Some(i) = &interval {
        az_hints |= !i.starts_with('P');
    }
    let mut metrics = Vec::with_capacity(values.len());
    let mut ids = Vec::new();
    for (mi, m) in values.iter().enumerate() {
        let mpath = format!("$.value[{mi}]");
        if !m.is_object() {
            return Err(bad(
                source,
                &mpath,
                format!("expected a metric object, got {}", type_name(m)),
            ));
        }
        let name = name_of(source, m, &mpath)?;
        if let Some(id) = get_str(source, m, &mpath, "id")? {
            ids.push(id);
        }
        let unit = get_str(source, m, &mpath, "unit")?.map(str::to_string);
        let error = get_str(source, m, &mpath, "errorCode")?
            .filter(|c| !c.eq_ignore_ascii_case("success"))
            .map(|c| {
                let msg = m.get("errorMessage").and_then(Value::as_str).unwrap_or("");
                if msg.is_empty() {
                    c.to_string()
                } else {
                    format!("{c}: {msg}")
                }
            });
        let ts = match m.get("timeseries") {
            None | Some(Value::Null) => &[][..],
            Some(_) => get_array(source, m, &mpath, "timeseries")?,
        };
        let mut series = Vec::with_capacity(ts.len());
        for (si, s) in ts.iter().enumerate() {
            let spath = format!("{mpath}.timeseries[{si}]");
            if !s.is_object() {
                return Err(bad(
                    source,
                    &spath,
                    format!("expected a series object, got {}", type_name(s)),
                ));
            }
            let mut dimensions = BTreeMap::new();
            let md = match s.get("metadatavalues") {
                None | Some(Value::Null) => &[][..],
                Some(_) => get_array(source, s, &spath, "metadatavalues")?,
            };
            for (di, d) in md.iter().enumerate() {
                let dpath = format!("{spath}.metadatavalues[{di}]");
                let dname = name_of(source, d, &dpath)?;
                let value = get_str(source, d, &dpath, "value")?
                    .ok_or_else(|| bad(source, &dpath, format!("missing `value` of dimension {dname}")))?;
                dimensions.insert(dname.to_ascii_lowercase(), value.to_string());
            }
            let data = match s.get("data") {
                None | Some(Value::Null) => &[][..],
                Some(_) => get_array(source, s, &spath, "data")?,
            };
            let mut points = Vec::with_capacity(data.len());
            for (pi, p) in data.iter().enumerate() {
                let ppath = format!("{spath}.data[{pi}]");
                if !p.is_object() {
                    return Err(bad(
                        source,
                        &ppath,
                        format!("expected a data point, got {}", type_name(p)),
                    ));
                }
                let timestamp = get_str(source, p, &ppath, "timeStamp")?
                    .ok_or_else(|| bad(source, &ppath, "missing `timeStamp`"))?
                    .to_string();
                az_hints |= timestamp.ends_with("+00:00");
                points.push(Point {
                    timestamp,
                    average: get_num(source, p, &ppath, "average")?,
                    minimum: get_num(source, p, &ppath, "minimum")?,
                    maximum: get_num(source, p, &ppath, "maximum")?,
                    total: get_num(source, p, &ppath, "total")?,
                    count: get_num(source, p, &ppath, "count")?,
                });
            }
            series.push(Series { dimensions, points });
        }
        metrics.push(Metric {
            name,
            unit,
            error,
            series,
        });
    }
    Ok(MetricsDoc {
        source: source.to_string(),
        flavour: if az_hints { Flavour::AzCli } else { Flavour::Rest },
        resource: kind_of(namespace, &ids),
        timespan,
        interval,
        metrics,
    })
}

/// Read and parse a metrics file.
pub fn read_path(path: &Path) -> Result<MetricsDoc, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "cannot read metrics file",
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// One backend instance (node IP) of a load balancer over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendUsage {
    /// The `BackendIPAddress` value: the node's IP.
    pub backend_ip: IpAddr,
    /// Ports allocated to the backend (latest `AllocatedSnatPorts`; series of several
    /// frontend IPs or protocols are summed per timestamp).
    pub allocated: Option<f64>,
    /// Peak `UsedSnatPorts` (per grain: `maximum`, else `average`).
    pub used_peak: Option<f64>,
    /// Mean of the `UsedSnatPorts` averages over the window.
    pub used_mean: Option<f64>,
    /// `used_peak / allocated`, when both are known and `allocated > 0`.
    pub peak_ratio: Option<f64>,
    /// `SnatConnectionCount` totals over the window by ConnectionState (`Failed`,
    /// `Successful`, `Pending`).
    pub connections: BTreeMap<String, f64>,
    /// Failed SNAT connections over the window (any value > 0 means exhaustion).
    pub failed: f64,
    /// `critical` if any connection failed or the peak ratio is >= 90 %, `warning` at >= 75 %
    /// (Microsoft's suggested alert levels), else `info`.
    pub severity: Severity,
}

/// What the metrics say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnatMetrics {
    /// Which tool produced the document.
    pub flavour: Flavour,
    /// Load balancer or NAT gateway.
    pub resource: ResourceKind,
    /// The window, as the document gave it.
    pub timespan: Option<String>,
    /// Load balancer backends ranked by peak used/allocated ratio (highest first; unknown
    /// ratios last; ties broken by failed connections, then IP).
    pub by_ratio: Vec<BackendUsage>,
    /// The same backends ranked by failed connections (highest first; ties by ratio, then IP).
    pub by_failed: Vec<BackendUsage>,
    /// NAT gateway totals by metric and ConnectionState (e.g. `SNATConnectionCount/Failed`).
    pub nat_gateway: BTreeMap<String, f64>,
    /// Whether node-level attribution is possible from these metrics.
    pub per_node: bool,
    /// Whether the document has `SnatConnectionCount` split by `BackendIPAddress` and
    /// `ConnectionState`, so that
    /// the backends' `failed` counts are known. When it is false (a file of the port
    /// metrics only), `failed` is 0 for every backend because nothing was measured, and a
    /// note says so.
    #[serde(default)]
    pub failed_known: bool,
    /// Things the reader must know (missing splits, metric errors, NAT gateway caveat).
    pub notes: Vec<String>,
}

impl SnatMetrics {
    /// The backend most under pressure: top of `by_failed` if anything failed, else top of
    /// `by_ratio`.
    pub fn hottest(&self) -> Option<&BackendUsage> {
        match self.by_failed.first() {
            Some(b) if b.failed > 0.0 => Some(b),
            _ => self.by_ratio.first(),
        }
    }
}

/// The note for a load balancer document without `SnatConnectionCount` (followed by
/// [`SNAT_CONNECTION_COUNT_AZ`]).
pub const FAILED_UNKNOWN_NOTE: &str = "the document has no SnatConnectionCount split by BackendIPAddress and ConnectionState, so failed SNAT connections (the surest sign of exhaustion) are unknown, not zero; get them with";

/// The `az` command line that gets a load balancer's failed SNAT connections for the last
/// hour, to be read together with the port metrics (`metrics::read([ports, failed])`).
pub const SNAT_CONNECTION_COUNT_AZ: &str = "az monitor metrics list --resource <LB resource id> --metrics SnatConnectionCount --aggregation Total --interval PT1M --offset 1h --filter \"BackendIPAddress eq '*' and ConnectionState eq '*'\" -o json";

/// The note attached to NAT gateway metrics.
pub const NAT_GATEWAY_NOTE: &str = "NAT gateway metrics carry no per-node dimension (ports are allocated on demand across the subnet): find the node by a socket census of every node (snat-run examples/census.rhai --all-nodes --image <your snat image>)";

#[derive(Default)]
struct Acc {
    alloc: BTreeMap<String, f64>,
    used_peak: BTreeMap<String, f64>,
    used_avg: BTreeMap<String, f64>,
    conns: BTreeMap<String, f64>,
}

/// Analyse a parsed document.
///
/// Errors only when a `BackendIPAddress` value is not an IP address.
pub fn analyze(doc: &MetricsDoc) -> Result<SnatMetrics, Error> {
    let mut notes = Vec::new();
    for m in &doc.metrics {
        if let Some(e) = &m.error {
            notes.push(format!("metric {} returned an error: {e}", m.name));
        }
    }
    let is_nat = doc.resource == ResourceKind::NatGateway
        || (doc.resource != ResourceKind::LoadBalancer
            && doc.metric("UsedSnatPorts").is_none()
            && doc.metrics.iter().any(|m| {
                m.name.eq_ignore_ascii_case("TotalConnectionCount") || m.name.eq_ignore_ascii_case("PacketDropCount")
            }));
    let mut out = SnatMetrics {
        flavour: doc.flavour,
        resource: if is_nat {
            ResourceKind::NatGateway
        } else {
            doc.resource.clone()
        },
        timespan: doc.timespan.clone(),
        by_ratio: Vec::new(),
        by_failed: Vec::new(),
        nat_gateway: BTreeMap::new(),
        per_node: !is_nat,
        failed_known: false,
        notes,
    };
    if is_nat {
        for m in &doc.metrics {
            for s in &m.series {
                let key = match s.dimension("connectionstate") {
                    Some(st) => format!("{}/{st}", m.name),
                    None => m.name.clone(),
                };
                let sum: f64 = s.points.iter().filter_map(|p| p.total.or(p.average)).sum();
                *out.nat_gateway.entry(key).or_default() += sum;
            }
        }
        out.notes.push(NAT_GATEWAY_NOTE.to_string());
        return Ok(out);
    }

    let mut per_ip: BTreeMap<IpAddr, Acc> = BTreeMap::new();
    let mut used_means: BTreeMap<IpAddr, (f64, usize)> = BTreeMap::new();
    for (mi, m) in doc.metrics.iter().enumerate() {
        let which = m.name.to_ascii_lowercase();
        if !matches!(
            which.as_str(),
            "allocatedsnatports" | "usedsnatports" | "snatconnectioncount"
        ) {
            continue;
        }
        let mut unsplit = false;
        for (si, s) in m.series.iter().enumerate() {
            let Some(ip) = s.dimension("BackendIPAddress") else {
                unsplit |= !s.points.is_empty();
                continue;
            };
            let ip: IpAddr = ip.trim().parse().map_err(|_| {
                bad(
                    &doc.source,
                    &format!("$.value[{mi}].timeseries[{si}].metadatavalues"),
                    format!("BackendIPAddress {ip:?} is not an IP address"),
                )
            })?;
            let acc = per_ip.entry(ip).or_default();
            // Failures are known only where the counts are split by ConnectionState.
            out.failed_known |= which == "snatconnectioncount" && s.dimension("ConnectionState").is_some();
            for p in &s.points {
                match which.as_str() {
                    "allocatedsnatports" => {
                        if let Some(v) = p.average.or(p.maximum) {
                            *acc.alloc.entry(p.timestamp.clone()).or_default() += v;
                        }
                    }
                    "usedsnatports" => {
                        if let Some(v) = p.maximum.or(p.average) {
                            *acc.used_peak.entry(p.timestamp.clone()).or_default() += v;
                        }
                        if let Some(v) = p.average {
                            *acc.used_avg.entry(p.timestamp.clone()).or_default() += v;
                        }
                    }
                    _ => {
                        let state = s.dimension("ConnectionState").unwrap_or("All").to_string();
                        *acc.conns.entry(state).or_default() += p.total.or(p.average).unwrap_or(0.0);
                    }
                }
            }
        }
        if unsplit {
            out.notes.push(format!(
                "metric {} is not split by BackendIPAddress: ask for the split (az: --filter \"BackendIPAddress eq '*'\")",
                m.name
            ));
        }
    }
    for (ip, acc) in &per_ip {
        let n = acc.used_avg.len();
        if n > 0 {
            used_means.insert(*ip, (acc.used_avg.values().sum::<f64>(), n));
        }
    }
    let mut rows: Vec<BackendUsage> = per_ip
        .into_iter()
        .map(|(ip, acc)| {
            // Timestamps in either flavour sort chronologically as strings within one document.
            let allocated = acc.alloc.values().next_back().copied();
            let used_peak = acc.used_peak.values().copied().reduce(f64::max);
            let used_mean = used_means.get(&ip).map(|(s, n)| s / *n as f64);
            let peak_ratio = match (used_peak, allocated) {
                (Some(u), Some(a)) if a > 0.0 => Some(u / a),
                _ => None,
            };
            let failed = acc
                .conns
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("failed"))
                .map(|(_, v)| v)
                .sum();
            let ratio = peak_ratio.unwrap_or(0.0);
            let severity = if failed > 0.0 || ratio >= 0.9 {
                Severity::Critical
            } else if ratio >= 0.75 {
                Severity::Warning
            } else {
                Severity::Info
            };
            BackendUsage {
                backend_ip: ip,
                allocated,
                used_peak,
                used_mean,
                peak_ratio,
                connections: acc.conns,
                failed,
                severity,
            }
        })
        .collect();
    if rows.is_empty() {
        out.notes.push(
            "no SNAT metric split by BackendIPAddress: the document has nothing to rank (expected AllocatedSnatPorts, UsedSnatPorts or SnatConnectionCount)"
                .to_string(),
        );
    }
    if !rows.is_empty() && !out.failed_known {
        out.notes
            .push(format!("{FAILED_UNKNOWN_NOTE}: {SNAT_CONNECTION_COUNT_AZ}"));
    }
    let ratio_key = |b: &BackendUsage| b.peak_ratio.unwrap_or(-1.0);
    rows.sort_by(|a, b| {
        ratio_key(b)
            .total_cmp(&ratio_key(a))
            .then(b.failed.total_cmp(&a.failed))
            .then(a.backend_ip.cmp(&b.backend_ip))
    });
    out.by_ratio = rows.clone();
    rows.sort_by(|a, b| {
        b.failed
            .total_cmp(&a.failed)
            .then(ratio_key(b).total_cmp(&ratio_key(a)))
            .then(a.backend_ip.cmp(&b.backend_ip))
    });
    out.by_failed = rows;
    Ok(out)
}

/// The metric names asked of each resource kind, per `az` call.
fn az_queries(kind: &ResourceKind) -> Vec<(&'static [&'static str], &'static [&'static str], Option<&'static str>)> {
    match kind {
        ResourceKind::NatGateway => vec![(
            &["SNATConnectionCount", "TotalConnectionCount", "PacketDropCount"],
            &["Total"],
            None,
        )],
        _ => vec![
            (
                &["AllocatedSnatPorts", "UsedSnatPorts"],
                &["Average", "Maximum"],
                Some("BackendIPAddress eq '*'"),
            ),
            (
                &["SnatConnectionCount"],
                &["Total"],
                Some("BackendIPAddress eq '*' and ConnectionState eq '*'"),
            ),
        ],
    }
}

/// The resource kind an Azure resource id names; an error for anything but a load
/// balancer or a NAT gateway.
pub fn resource_kind_of_id(resource_id: &str) -> Result<ResourceKind, Error> {
    let l = resource_id.to_ascii_lowercase();
    if !l.starts_with("/subscriptions/") {
        return Err(Error::InvalidArgument(format!(
            "resource id {resource_id:?} must start with /subscriptions/ (e.g. the output of `az network lb show --query id -o tsv`)"
        )));
    }
    match kind_of(None, &[&l]) {
        ResourceKind::Other(_) => Err(Error::InvalidArgument(format!(
            "resource id {resource_id:?} is neither a load balancer (Microsoft.Network/loadBalancers) nor a NAT gateway (Microsoft.Network/natGateways)"
        ))),
        k => Ok(k),
    }
}

/// The exact `az` command lines (argv without the program name) that fetch the SNAT
/// metrics of a load balancer or NAT gateway over the last `offset` (az syntax, e.g.
/// `1h`, `30m`), at one-minute grain. A load balancer needs two calls: its
/// `SnatConnectionCount` has a ConnectionState dimension the port metrics lack.
pub fn az_commands(resource_id: &str, offset: &str) -> Result<Vec<Vec<String>>, Error> {
    let kind = resource_kind_of_id(resource_id)?;
    if offset.is_empty() || !offset.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::InvalidArgument(format!(
            "offset {offset:?} must look like 1h, 30m or 1d"
        )));
    }
    Ok(az_queries(&kind)
        .into_iter()
        .map(|(metrics, aggs, filter)| {
            let mut a: Vec<String> = ["monitor", "metrics", "list", "--resource", resource_id, "--metrics"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.extend(metrics.iter().map(|s| s.to_string()));
            a.push("--aggregation".into());
            a.extend(aggs.iter().map(|s| s.to_string()));
            a.extend(["--interval", "PT1M", "--offset", offset].map(String::from));
            if let Some(f) = filter {
                a.push("--filter".into());
                a.push(f.into());
            }
            a.extend(["--output", "json"].map(String::from));
            a
        })
        .collect())
}

/// Find an executable on a `PATH`-style search list.
pub fn find_on_path(program: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var).find_map(|dir| {
        let p = dir.join(program);
        let meta = std::fs::metadata(&p).ok()?;
        use std::os::unix::fs::PermissionsExt;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(p)
    })
}

/// Fetch and analyse the metrics with the Azure CLI, if `az` is found on `path_var`
/// (normally the `PATH` environment variable). `Ok(None)` when there is no `az`.
pub fn fetch_with_az(resource_id: &str, offset: &str, path_var: &OsStr) -> Result<Option<MetricsDoc>, Error> {
    let cmds = az_commands(resource_id, offset)?;
    let Some(az) = find_on_path("az", path_var) else {
        return Ok(None);
    };
    let mut doc: Option<MetricsDoc> = None;
    for argv in cmds {
        let out = std::process::Command::new(&az)
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| Error::Io {
                what: "cannot run the Azure CLI",
                path: az.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::AzCli {
                command: format!("az {}", argv.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().chars().take(2000).collect(),
            });
        }
        let part = parse(&String::from_utf8_lossy(&out.stdout), "az monitor metrics list")?;
        match &mut doc {
            Some(d) => d.merge(part),
            None => doc = Some(part),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn data(name: &str) -> String {
        let p = format!("{}/../tests/data/metrics/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[rstest]
    #[case::az("sample-az-metrics.json", Flavour::AzCli)]
    #[case::rest("rest-lb-metrics.json", Flavour::Rest)]
    fn both_flavours_rank_the_same_hot_node(#[case] file: &str, #[case] flavour: Flavour) {
        let doc = parse(&data(file), file).unwrap();
        assert_eq!(doc.flavour, flavour);
        assert_eq!(doc.resource, ResourceKind::LoadBalancer);
        let a = analyze(&doc).unwrap();
        assert!(a.per_node);
        let top = &a.by_ratio[0];
        assert_eq!(top.backend_ip.to_string(), "10.224.0.4");
        assert_eq!(top.allocated, Some(1024.0));
        assert_eq!(top.used_peak, Some(1024.0));
        assert_eq!(top.peak_ratio, Some(1.0));
        assert_eq!(top.severity, Severity::Critical);
        assert_eq!(a.by_ratio[1].backend_ip.to_string(), "10.224.0.5");
        assert_eq!(a.by_ratio[1].used_peak, Some(44.0));
        assert_eq!(a.by_ratio[1].used_mean, Some((41.0 + 38.5) / 2.0));
        assert_eq!(
            a.by_ratio[1].severity,
            if flavour == Flavour::Rest {
                Severity::Critical
            } else {
                Severity::Info
            }
        );
        assert_eq!(a.hottest().unwrap().backend_ip, a.by_failed[0].backend_ip);
    }

    #[test]
    fn rest_flavour_ranks_failed_connections() {
        let a = analyze(&parse(&data("rest-lb-metrics.json"), "rest").unwrap()).unwrap();
        // 10.224.0.5 has few ports in use but failed connections: it tops the failure ranking.
        assert_eq!(a.by_failed[0].backend_ip.to_string(), "10.224.0.5");
        assert_eq!(a.by_failed[0].failed, 7.0);
        assert_eq!(a.by_failed[0].connections["Successful"], 300.0);
        assert_eq!(a.by_failed[1].failed, 0.0);
        assert_eq!(a.hottest().unwrap().backend_ip.to_string(), "10.224.0.5");
        assert_eq!(a.timespan.as_deref(), Some("2024-06-01T10:00:00Z/2024-06-01T10:02:00Z"));
    }

    #[rstest]
    #[case::lower("backendipaddress", "connectionstate")]
    #[case::portal("BackendIPAddress", "ConnectionState")]
    #[case::shouting("BACKENDIPADDRESS", "CONNECTIONSTATE")]
    fn dimension_names_match_case_insensitively(#[case] backend: &str, #[case] state: &str) {
        let text = data("rest-lb-metrics.json")
            .replace("\"backendipaddress\"", &format!("\"{backend}\""))
            .replace("\"connectionstate\"", &format!("\"{state}\""));
        let a = analyze(&parse(&text, "case").unwrap()).unwrap();
        assert_eq!(a.by_failed[0].backend_ip.to_string(), "10.224.0.5");
        assert_eq!(a.by_failed[0].failed, 7.0);
        assert_eq!(a.by_ratio[0].peak_ratio, Some(1.0));
    }

    #[test]
    fn metric_errors_become_notes() {
        let mut v: Value = serde_json::from_str(&data("rest-lb-metrics.json")).unwrap();
        v["value"][2]["errorCode"] = "Throttled".into();
        v["value"][2]["errorMessage"] = "Too many requests".into();
        let a = analyze(&parse(&v.to_string(), "err").unwrap()).unwrap();
        assert!(
            a.notes
                .iter()
                .any(|n| n == "metric SnatConnectionCount returned an error: Throttled: Too many requests"),
            "{:?}",
            a.notes
        );
    }

    #[test]
    fn nat_gateway_is_recognised_and_says_no_per_node_split() {
        let a = analyze(&parse(&data("natgw-metrics.json"), "natgw").unwrap()).unwrap();
        assert_eq!(a.resource, ResourceKind::NatGateway);
        assert!(!a.per_node);
        assert!(a.by_ratio.is_empty());
        assert_eq!(a.nat_gateway["SNATConnectionCount/Failed"], 12.0);
        assert_eq!(a.nat_gateway["PacketDropCount"], 3.0);
        assert!(
            a.notes
                .iter()
                .any(|n| n.contains("no per-node dimension") && n.contains("census"))
        );
    }

    #[test]
    fn unsplit_metric_is_reported() {
        let a = analyze(&parse(&data("lb-unsplit.json"), "unsplit").unwrap()).unwrap();
        assert!(a.by_ratio.is_empty());
        assert!(
            a.notes
                .iter()
                .any(|n| n.contains("UsedSnatPorts") && n.contains("BackendIPAddress eq '*'"))
        );
    }

    #[rstest]
    #[case::not_json("malformed-truncated.json", "$", "not JSON")]
    #[case::array_root("malformed-root-array.json", "$", "expected an object")]
    #[case::no_value("malformed-no-value.json", "$", "missing `value`")]
    #[case::string_number(
        "malformed-string-average.json",
        "$.value[0].timeseries[0].data[1].average",
        "expected a number"
    )]
    #[case::no_timestamp(
        "malformed-no-timestamp.json",
        "$.value[1].timeseries[0].data[0]",
        "missing `timeStamp`"
    )]
    #[case::no_name("malformed-no-name.json", "$.value[0]", "missing `name`")]
    #[case::bad_ip(
        "malformed-bad-ip.json",
        "$.value[0].timeseries[0].metadatavalues",
        "not an IP address"
    )]
    fn malformed_files_name_the_path(#[case] file: &str, #[case] path: &str, #[case] problem: &str) {
        let err = parse(&data(file), file).and_then(|d| analyze(&d)).unwrap_err();
        match &err {
            Error::MetricsFormat {
                path: p, problem: pr, ..
            } => {
                assert_eq!(p, path, "{err}");
                assert!(pr.contains(problem), "{err}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains(path));
    }

    #[rstest]
    #[case(
        "/subscriptions/s/resourceGroups/MC_x/providers/Microsoft.Network/loadBalancers/kubernetes",
        2
    )]
    #[case("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/natGateways/gw", 1)]
    fn az_argv_is_exact(#[case] id: &str, #[case] calls: usize) {
        let cmds = az_commands(id, "1h").unwrap();
        assert_eq!(cmds.len(), calls);
        if calls == 2 {
            assert_eq!(
                cmds[0],
                [
                    "monitor",
                    "metrics",
                    "list",
                    "--resource",
                    id,
                    "--metrics",
                    "AllocatedSnatPorts",
                    "UsedSnatPorts",
                    "--aggregation",
                    "Average",
                    "Maximum",
                    "--interval",
                    "PT1M",
                    "--offset",
                    "1h",
                    "--filter",
                    "BackendIPAddress eq '*'",
                    "--output",
                    "json"
                ]
            );
            assert_eq!(
                cmds[1][cmds[1].len() - 3],
                "BackendIPAddress eq '*' and ConnectionState eq '*'"
            );
            assert!(cmds[1].contains(&"SnatConnectionCount".to_string()));
        } else {
            assert!(cmds[0].contains(&"SNATConnectionCount".to_string()));
            assert!(!cmds[0].contains(&"--filter".to_string()));
        }
    }

    /// The port metrics alone say nothing of failed connections: unknown, with a note naming
    /// the az command; with the second file (SnatConnectionCount) the failures rank the
    /// backends.
    #[test]
    fn failed_connections_are_unknown_without_snat_connection_count() {
        let dir = format!("{}/../tests/data/metrics", env!("CARGO_MANIFEST_DIR"));
        let ports = PathBuf::from(format!("{dir}/sample-az-metrics.json"));
        let conns = PathBuf::from(format!("{dir}/sample-az-snat-connections.json"));
        let a = analyze(&read_paths(&[&ports]).unwrap()).unwrap();
        assert!(!a.failed_known);
        assert!(
            a.notes
                .iter()
                .any(|n| n.starts_with(FAILED_UNKNOWN_NOTE) && n.contains("SnatConnectionCount")),
            "{:?}",
            a.notes
        );
        let a = analyze(&read_paths(&[&ports, &conns]).unwrap()).unwrap();
        assert!(a.failed_known, "{:?}", a.notes);
        assert!(a.notes.is_empty(), "{:?}", a.notes);
        let hot = a.hottest().unwrap();
        assert_eq!(hot.backend_ip.to_string(), "10.224.0.4");
        assert_eq!(hot.failed, 89.0);
        assert_eq!(a.by_failed[1].failed, 0.0);
        assert_eq!(hot.allocated, Some(1024.0));
        // The same file twice would count everything twice.
        let err = read_paths(&[&ports, &ports]).unwrap_err().to_string();
        assert!(
            err.contains("is in both") && err.contains("pass each metric once"),
            "{err}"
        );
        // SnatConnectionCount split by backend but not by ConnectionState: failures unknown.
        let text = std::fs::read_to_string(&conns).unwrap();
        let mut v: Value = serde_json::from_str(&text).unwrap();
        for ts in v["value"][0]["timeseries"].as_array_mut().unwrap() {
            ts["metadatavalues"].as_array_mut().unwrap().truncate(1);
        }
        let unsplit = parse(&v.to_string(), "no-state.json").unwrap();
        let mut doc = read_paths(&[&ports]).unwrap();
        doc.merge(unsplit);
        let a = analyze(&doc).unwrap();
        assert!(!a.failed_known, "{:?}", a.notes);
        // Files of a NAT gateway and a load balancer are not one resource.
        let nat = PathBuf::from(format!("{dir}/natgw-metrics.json"));
        let err = read_paths(&[&ports, &nat]).unwrap_err().to_string();
        assert!(err.contains("different kinds of resource"), "{err}");
    }

    #[rstest]
    #[case("kubernetes")]
    #[case("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm")]
    fn az_argv_rejects_other_resources(#[case] id: &str) {
        assert!(matches!(az_commands(id, "1h"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn fetch_with_az_runs_az_only_when_present() {
        let id = "/subscriptions/s/resourceGroups/MC_x/providers/Microsoft.Network/loadBalancers/kubernetes";
        let empty = tempfile::tempdir().unwrap();
        assert!(fetch_with_az(id, "1h", empty.path().as_os_str()).unwrap().is_none());
        // A stand-in `az` that checks its arguments and prints the sample.
        let dir = tempfile::tempdir().unwrap();
        let sample = format!(
            "{}/../tests/data/metrics/sample-az-metrics.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let script = format!(
            "#!/bin/sh\n[ \"$1 $2 $3\" = \"monitor metrics list\" ] || exit 9\ncase \"$*\" in *SnatConnectionCount*) echo '{{\"value\":[]}}';; *) cat '{sample}';; esac\n"
        );
        let az = dir.path().join("az");
        std::fs::write(&az, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
        let doc = fetch_with_az(id, "1h", dir.path().as_os_str()).unwrap().unwrap();
        assert_eq!(doc.metrics.len(), 2);
        assert_eq!(analyze(&doc).unwrap().by_ratio[0].backend_ip.to_string(), "10.224.0.4");
        // A failing az gives the command and its stderr.
        std::fs::write(&az, "#!/bin/sh\necho 'AuthorizationFailed' >&2\nexit 1\n").unwrap();
        let err = fetch_with_az(id, "1h", dir.path().as_os_str()).unwrap_err().to_string();
        assert!(
            err.contains("az monitor metrics list") && err.contains("AuthorizationFailed"),
            "{err}"
        );
    }

    fn mutate(v: &mut Value, choice: u32, depth: u32) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                let k = &keys[(choice as usize) % keys.len()];
                if depth == 0 || choice.is_multiple_of(5) {
                    match choice % 4 {
                        0 => {
                            m.remove(k);
                        }
                        1 => {
                            m.insert(k.clone(), Value::from("x"));
                        }
                        2 => {
                            m.insert(k.clone(), Value::from(-1.5));
                        }
                        _ => {
                            m.insert(k.clone(), Value::Null);
                        }
                    }
                } else if let Some(c) = m.get_mut(k) {
                    mutate(c, choice / 3 + 1, depth - 1);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let i = (choice as usize) % a.len();
                if depth == 0 || choice.is_multiple_of(7) {
                    a[i] = Value::Bool(true);
                } else {
                    mutate(&mut a[i], choice / 2 + 1, depth - 1);
                }
            }
            other => *other = Value::Array(vec![]),
        }
    }

    proptest! {
        #[test]
        fn mutated_documents_never_panic(choice in any::<u32>(), depth in 0u32..8, flavour in 0usize..3) {
            let file = ["sample-az-metrics.json", "rest-lb-metrics.json", "natgw-metrics.json"][flavour];
            let mut v: Value = serde_json::from_str(&data(file)).unwrap();
            mutate(&mut v, choice, depth);
            let text = v.to_string();
            if let Err(e) = parse(&text, "mutated").and_then(|d| analyze(&d)) {
                let msg = e.to_string();
                prop_assert!(msg.contains("mutated") && msg.contains('$'), "{}", msg);
            }
        }

        #[test]
        fn truncated_or_garbage_never_panics(cut in 0usize..3000, garbage in ".{0,40}") {
            let text = data("rest-lb-metrics.json");
            let mut t: String = text.chars().take(cut).collect();
            t.push_str(&garbage);
            let _ = parse(&t, "cut").and_then(|d| analyze(&d));
        }
    }
}
