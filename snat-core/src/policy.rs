//! Which destinations consume SNAT ports, and which rule says so.
//!
//! On AKS, outbound flows to *public* destinations are source-NATed by the cluster's
//! outbound path (load balancer, NAT gateway or firewall); flows to the VNet, peered VNets,
//! private endpoints, loopback, link-local and the Azure platform address are not. A
//! [`Policy`] holds three sets of rules, consulted in this order: the user's "treat as
//! public" overrides (e.g. a private range behind an SNATing firewall), the user's private
//! ranges (VNet, peered VNet, pod and service CIDRs, which may be non-RFC 1918), then the
//! built-in special-purpose ranges. Within a set the longest prefix wins. Every
//! [`Verdict`] names the rule that decided it, so a report can show *why* a destination was
//! counted. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are classified exactly as their
//! embedded IPv4 address, and the verdict says so. Documentation and benchmark ranges
//! (RFC 5737, RFC 2544, RFC 3849) are treated as public but flagged, because snat's tests
//! use them as "internet" destinations inside their own network namespaces.

use std::cmp::Reverse;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// What kind of address a destination is, as decided by the rule that matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrClass {
    /// A public (internet) address: flows to it consume SNAT ports.
    Public,
    /// RFC 1918 private space (10/8, 172.16/12, 192.168/16).
    Private,
    /// RFC 6598 shared address space 100.64.0.0/10 (carrier-grade NAT; Azure also allows it
    /// as VNet space).
    SharedAddressSpace,
    /// Loopback (127/8, ::1).
    Loopback,
    /// Link-local (169.254/16, fe80::/10).
    LinkLocal,
    /// The Azure Instance Metadata Service, 169.254.169.254: answered on the host.
    Imds,
    /// The Azure platform virtual IP 168.63.129.16 (DNS, health probes, wireserver).
    AzurePlatform,
    /// Multicast (224/4, ff00::/8).
    Multicast,
    /// The IPv4 limited broadcast address 255.255.255.255.
    Broadcast,
    /// Unspecified or "this network" (0.0.0.0/8, ::).
    Unspecified,
    /// IPv6 unique local addresses (fc00::/7).
    UniqueLocal,
    /// A user-given VNet range.
    Vnet,
    /// A user-given peered VNet range.
    PeeredVnet,
    /// A user-given pod CIDR.
    PodCidr,
    /// A user-given service CIDR.
    ServiceCidr,
    /// Another user-given range that does not use SNAT (private endpoints, on-premises...).
    UserPrivate,
}

impl AddrClass {
    /// The snake_case name used in JSON and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Private => "private",
            AddrClass::SharedAddressSpace => "shared_address_space",
            AddrClass::Loopback => "loopback",
            AddrClass::LinkLocal => "link_local",
            AddrClass::Imds => "imds",
            AddrClass::AzurePlatform => "azure_platform",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Unspecified => "unspecified",
            AddrClass::UniqueLocal => "unique_local",
            AddrClass::Vnet => "vnet",
            AddrClass::PeeredVnet => "peered_vnet",
            AddrClass::PodCidr => "pod_cidr",
            AddrClass::ServiceCidr => "service_cidr",
            AddrClass::UserPrivate => "user_private",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a user-given range that does not use SNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserRangeKind {
    /// The cluster's VNet (`vnet`).
    Vnet,
    /// A peered VNet (`peered-vnet`).
    PeeredVnet,
    /// The pod CIDR, for overlay networking (`pod`).
    Pod,
    /// The service CIDR (`service`).
    Service,
    /// Anything else reached without SNAT: private endpoints, VPN or ExpressRoute
    /// on-premises ranges... (`other`).
    Other,
}

impl UserRangeKind {
    /// The name accepted by [`UserRangeKind::from_str`].
    pub fn as_str(self) -> &'static str {
        match self {
            UserRangeKind::Vnet => "vnet",
            UserRangeKind::PeeredVnet => "peered-vnet",
            UserRangeKind::Pod => "pod",
            UserRangeKind::Service => "service",
            UserRangeKind::Other => "other",
        }
    }

    /// The address class that a range of this kind gives its addresses.
    pub fn class(self) -> AddrClass {
        match self {
            UserRangeKind::Vnet => AddrClass::Vnet,
            UserRangeKind::PeeredVnet => AddrClass::PeeredVnet,
            UserRangeKind::Pod => AddrClass::PodCidr,
            UserRangeKind::Service => AddrClass::ServiceCidr,
            UserRangeKind::Other => AddrClass::UserPrivate,
        }
    }
}

impl fmt::Display for UserRangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UserRangeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "vnet" => UserRangeKind::Vnet,
            "peered-vnet" | "peered" => UserRangeKind::PeeredVnet,
            "pod" | "pods" => UserRangeKind::Pod,
            "service" | "services" | "svc" => UserRangeKind::Service,
            "other" => UserRangeKind::Other,
            _ => return Err(Error::UnknownRangeKind { kind: s.to_string() }),
        })
    }
}

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// A user-given "treat as public" override ([`Policy::add_public`]).
    UserPublic,
    /// A user-given range that does not use SNAT ([`Policy::add_private`]).
    UserPrivate,
    /// One of snat's built-in rules.
    BuiltIn,
}

/// One rule of a [`Policy`], as shown in verdicts and reports.
///
/// JSON: `name`, `cidr` (e.g. `"10.0.0.0/8"`), `source` (`user_public`, `user_private`,
/// `built_in`), `snat` (whether matching destinations consume SNAT ports), `class`,
/// `documentation`, `kind` (user private ranges only), `label` (user rules only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Human name, e.g. `RFC 1918 10/8` or the user's label.
    pub name: String,
    /// The range the rule covers. IPv4-mapped IPv6 ranges given by a user are stored as
    /// their IPv4 range.
    pub cidr: IpNet,
    /// Built-in or user-given, and which user set.
    pub source: RuleSource,
    /// Whether destinations matched by this rule consume SNAT ports.
    pub snat: bool,
    /// The class the rule gives its addresses.
    pub class: AddrClass,
    /// Whether the range is reserved for documentation or benchmarking.
    pub documentation: bool,
    /// For user private ranges: their kind.
    pub kind: Option<UserRangeKind>,
    /// For user rules: the label given, if any.
    pub label: Option<String>,
    /// A caveat to show with verdicts of this rule.
    pub note: Option<String>,
}

/// Whether one destination address consumes SNAT ports, and why.
///
/// JSON: `ip`, `snat`, `class`, `rule` (a [`RuleInfo`]), `documentation`, `note`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Verdict {
    /// The address classified, as given (an IPv4-mapped address stays IPv6 here).
    pub ip: IpAddr,
    /// Whether an outbound flow to this address consumes a SNAT port.
    pub snat: bool,
    /// What kind of address it is.
    pub class: AddrClass,
    /// The rule that decided.
    pub rule: RuleInfo,
    /// Whether the address is in a documentation or benchmark range (treated as public).
    pub documentation: bool,
    /// Caveats: the rule's note, and for IPv4-mapped addresses which IPv4 address decided.
    pub note: Option<String>,
}

/// The rules that decide which destinations consume SNAT ports.
///
/// ```
/// use snat_core::policy::{Policy, UserRangeKind};
/// let mut p = Policy::new();
/// p.add_private("20.50.0.0/16", UserRangeKind::Vnet, Some("vnet (public space)")).unwrap();
/// assert!(!p.classify("20.50.1.2".parse().unwrap()).snat);
/// assert!(p.classify("20.51.1.2".parse().unwrap()).snat);
/// assert!(!p.classify("10.1.2.3".parse().unwrap()).snat);
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    user_public: Vec<RuleInfo>,
    user_private: Vec<RuleInfo>,
    builtin: Vec<RuleInfo>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new()
    }
}

const IMDS_NOTE: &str = "the Instance Metadata Service is answered on the host; flows to it never leave the node";
const WIRESERVER_NOTE: &str = "Azure's platform virtual IP is reached without the outbound path; that it uses no SNAT port is an inference, not documented";
const DOC_NOTE: &str = "documentation/benchmark range: treated as public (it is only reachable in test networks)";

fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    // Prefix lengths below are literals <= 32: `new` cannot fail.
    IpNet::V4(Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).unwrap_or_default())
}

fn v6(addr: Ipv6Addr, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new(addr, len).unwrap_or_default())
}

fn builtin(name: &str, cidr: IpNet, snat: bool, class: AddrClass, documentation: bool, note: Option<&str>) -> RuleInfo {
    RuleInfo {
        name: name.to_string(),
        cidr,
        source: RuleSource::BuiltIn,
        snat,
        class,
        documentation,
        kind: None,
        label: None,
        note: note.map(str::to_string),
    }
}

fn builtin_rules() -> Vec<RuleInfo> {
    use AddrClass as C;
    let doc = Some(DOC_NOTE);
    vec![
        builtin("RFC 1918 10/8", v4(10, 0, 0, 0, 8), false, C::Private, false, None),
        builtin(
            "RFC 1918 172.16/12",
            v4(172, 16, 0, 0, 12),
            false,
            C::Private,
            false,
            None,
        ),
        builtin(
            "RFC 1918 192.168/16",
            v4(192, 168, 0, 0, 16),
            false,
            C::Private,
            false,
            None,
        ),
        builtin(
            "RFC 6598 shared address space (CGNAT, VNet space)",
            v4(100, 64, 0, 0, 10),
            false,
            C::SharedAddressSpace,
            false,
            None,
        ),
        builtin("IPv4 loopback", v4(127, 0, 0, 0, 8), false, C::Loopback, false, None),
        builtin(
            "IPv4 link-local",
            v4(169, 254, 0, 0, 16),
            false,
            C::LinkLocal,
            false,
            None,
        ),
        builtin(
            "Azure IMDS",
            v4(169, 254, 169, 254, 32),
            false,
            C::Imds,
            false,
            Some(IMDS_NOTE),
        ),
        builtin(
            "Azure platform virtual IP",
            v4(168, 63, 129, 16, 32),
            false,
            C::AzurePlatform,
            false,
            Some(WIRESERVER_NOTE),
        ),
        builtin("IPv4 multicast", v4(224, 0, 0, 0, 4), false, C::Multicast, false, None),
        builtin(
            "IPv4 limited broadcast",
            v4(255, 255, 255, 255, 32),
            false,
            C::Broadcast,
            false,
            None,
        ),
        builtin(
            "IPv4 \"this network\"",
            v4(0, 0, 0, 0, 8),
            false,
            C::Unspecified,
            false,
            None,
        ),
        builtin(
            "IPv4 unspecified",
            v4(0, 0, 0, 0, 32),
            false,
            C::Unspecified,
            false,
            None,
        ),
        builtin("RFC 5737 TEST-NET-1", v4(192, 0, 2, 0, 24), true, C::Public, true, doc),
        builtin(
            "RFC 5737 TEST-NET-2",
            v4(198, 51, 100, 0, 24),
            true,
            C::Public,
            true,
            doc,
        ),
        builtin(
            "RFC 5737 TEST-NET-3",
            v4(203, 0, 113, 0, 24),
            true,
            C::Public,
            true,
            doc,
        ),
        builtin(
            "RFC 2544 benchmarking",
            v4(198, 18, 0, 0, 15),
            true,
            C::Public,
            true,
            doc,
        ),
        builtin("IPv4 public (default)", v4(0, 0, 0, 0, 0), true, C::Public, false, None),
        builtin(
            "IPv6 unique local",
            v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
            false,
            C::UniqueLocal,
            false,
            None,
        ),
        builtin(
            "IPv6 link-local",
            v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
            false,
            C::LinkLocal,
            false,
            None,
        ),
        builtin(
            "IPv6 loopback",
            v6(Ipv6Addr::LOCALHOST, 128),
            false,
            C::Loopback,
            false,
            None,
        ),
        builtin(
            "IPv6 unspecified",
            v6(Ipv6Addr::UNSPECIFIED, 128),
            false,
            C::Unspecified,
            false,
            None,
        ),
        builtin(
            "IPv6 multicast",
            v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
            false,
            C::Multicast,
            false,
            None,
        ),
        builtin(
            "RFC 3849 IPv6 documentation",
            v6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
            true,
            C::Public,
            true,
            doc,
        ),
        builtin(
            "IPv6 public (default)",
            v6(Ipv6Addr::UNSPECIFIED, 0),
            true,
            C::Public,
            false,
            None,
        ),
    ]
}

/// Longest prefix first, then IPv4 before IPv6, then by address: the order rules are
/// consulted in within a set (prefixes of equal length never overlap, so the rest only
/// makes listings deterministic).
fn sort_set(rules: &mut [RuleInfo]) {
    rules.sort_by_key(|r| (Reverse(r.cidr.prefix_len()), r.cidr.network(), r.cidr.prefix_len()));
}

/// Parses a user CIDR: `a.b.c.d/n`, `x::/n`, or a bare address (a /32 or /128). Host bits
/// are cleared (`10.1.2.3/8` is `10.0.0.0/8`). An IPv4-mapped IPv6 range with a prefix of
/// at least 96 becomes its IPv4 range, because mapped addresses are classified as IPv4.
fn parse_cidr(cidr: &str, set: &'static str) -> Result<IpNet, Error> {
    let text = cidr.trim();
    let invalid = |reason: String| Error::InvalidCidr {
        cidr: cidr.to_string(),
        set,
        reason,
    };
    if text.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let net = if text.contains('/') {
        text.parse::<IpNet>().map_err(|e| invalid(e.to_string()))?
    } else {
        let ip = text
            .parse::<IpAddr>()
            .map_err(|e| invalid(format!("{e} (expected an address or address/prefix)")))?;
        IpNet::from(ip)
    };
    let net = net.trunc();
    if let IpNet::V6(n6) = net
        && n6.prefix_len() >= 96
        && let Some(a4) = n6.network().to_ipv4_mapped()
    {
        let n4 = Ipv4Net::new(a4, n6.prefix_len() - 96).map_err(|e| invalid(e.to_string()))?;
        return Ok(IpNet::V4(n4));
    }
    Ok(net)
}

fn upsert(set: &mut Vec<RuleInfo>, rule: RuleInfo) {
    if let Some(existing) = set.iter_mut().find(|r| r.cidr == rule.cidr) {
        *existing = rule;
    } else {
        set.push(rule);
        sort_set(set);
    }
}

impl Policy {
    /// A policy with the built-in rules only.
    pub fn new() -> Policy {
        let mut builtin = builtin_rules();
        sort_set(&mut builtin);
        Policy {
            user_public: Vec::new(),
            user_private: Vec::new(),
            builtin,
        }
    }

    /// Declares a range reached without SNAT (VNet, peered VNet, pod or service CIDR,
    /// private endpoints...). It may be any range, including public space used as VNet
    /// space. `cidr` is `addr/prefix` or a bare address; host bits are cleared. Adding the
    /// same range again replaces its kind and label.
    pub fn add_private(&mut self, cidr: &str, kind: UserRangeKind, label: Option<&str>) -> Result<(), Error> {
        let net = parse_cidr(cidr, "private")?;
        let label = label.map(str::to_string).filter(|l| !l.trim().is_empty());
        let name = label.clone().unwrap_or_else(|| format!("user {kind} {net}"));
        upsert(
            &mut self.user_private,
            RuleInfo {
                name,
                cidr: net,
                source: RuleSource::UserPrivate,
                snat: false,
                class: kind.class(),
                documentation: false,
                kind: Some(kind),
                label,
                note: None,
            },
        );
        Ok(())
    }

    /// Declares a range whose destinations consume SNAT ports even though a built-in or
    /// user private rule says otherwise (e.g. a private range reached through an SNATing
    /// firewall, or 100.64.0.0/10 in setups where it is internet-bound). These overrides
    /// beat every other rule.
    ///
    /// For both `add_*` methods: IPv4-mapped addresses are classified as IPv4, so an IPv6
    /// range such as `::/0` never matches them; give the IPv4 range (or its `::ffff:` form,
    /// which is stored as IPv4).
    pub fn add_public(&mut self, cidr: &str, label: Option<&str>) -> Result<(), Error> {
        let net = parse_cidr(cidr, "public")?;
        let label = label.map(str::to_string).filter(|l| !l.trim().is_empty());
        let name = label.clone().unwrap_or_else(|| format!("user public {net}"));
        upsert(
            &mut self.user_public,
            RuleInfo {
                name,
                cidr: net,
                source: RuleSource::UserPublic,
                snat: true,
                class: AddrClass::Public,
                documentation: false,
                kind: None,
                label,
                note: None,
            },
        );
        Ok(())
    }

    /// Classifies one destination address. Total: every address gets a verdict (the
    /// built-in `0.0.0.0/0` and `::/0` rules catch whatever nothing else does).
    pub fn classify(&self, ip: IpAddr) -> Verdict {
        let (key, mapped) = match ip {
            IpAddr::V6(a6) => match a6.to_ipv4_mapped() {
                Some(a4) => (IpAddr::V4(a4), Some(a4)),
                None => (ip, None),
            },
            IpAddr::V4(_) => (ip, None),
        };
        let rule = self
            .user_public
            .iter()
            .chain(&self.user_private)
            .chain(&self.builtin)
            .find(|r| r.cidr.contains(&key))
            .cloned()
            .unwrap_or_else(|| {
                // Unreachable while the built-in defaults exist; stay total regardless.
                builtin(
                    "public (no rule matched)",
                    IpNet::from(key),
                    true,
                    AddrClass::Public,
                    false,
                    None,
                )
            });
        let documentation = rule.documentation;
        let note = match (mapped, &rule.note) {
            (Some(a4), Some(n)) => Some(format!("IPv4-mapped IPv6 address: classified as {a4}; {n}")),
            (Some(a4), None) => Some(format!("IPv4-mapped IPv6 address: classified as {a4}")),
            (None, n) => n.clone(),
        };
        Verdict {
            ip,
            snat: rule.snat,
            class: rule.class,
            documentation,
            note,
            rule,
        }
    }

    /// Every rule, in the order they are consulted: user public overrides, user private
    /// ranges, built-ins; longest prefix first within each set.
    pub fn rules(&self) -> Vec<RuleInfo> {
        self.user_public
            .iter()
            .chain(&self.user_private)
            .chain(&self.builtin)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[rstest]
    #[case("8.8.8.8", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("20.1.2.3", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("9.255.255.255", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("10.0.0.0", false, AddrClass::Private, "RFC 1918 10/8")]
    #[case("10.255.255.255", false, AddrClass::Private, "RFC 1918 10/8")]
    #[case("11.0.0.0", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("172.15.255.255", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("172.16.0.0", false, AddrClass::Private, "RFC 1918 172.16/12")]
    #[case("172.31.255.255", false, AddrClass::Private, "RFC 1918 172.16/12")]
    #[case("172.32.0.0", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("192.167.255.255", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("192.168.0.1", false, AddrClass::Private, "RFC 1918 192.168/16")]
    #[case("192.169.0.0", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("100.63.255.255", true, AddrClass::Public, "IPv4 public (default)")]
    #[case(
        "100.64.0.0",
        false,
        AddrClass::SharedAddressSpace,
        "RFC 6598 shared address space (CGNAT, VNet space)"
    )]
    #[case(
        "100.127.255.255",
        false,
        AddrClass::SharedAddressSpace,
        "RFC 6598 shared address space (CGNAT, VNet space)"
    )]
    #[case("100.128.0.0", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("127.0.0.1", false, AddrClass::Loopback, "IPv4 loopback")]
    #[case("127.255.255.254", false, AddrClass::Loopback, "IPv4 loopback")]
    #[case("169.254.0.1", false, AddrClass::LinkLocal, "IPv4 link-local")]
    #[case("169.254.169.253", false, AddrClass::LinkLocal, "IPv4 link-local")]
    #[case("169.254.169.254", false, AddrClass::Imds, "Azure IMDS")]
    #[case("169.254.169.255", false, AddrClass::LinkLocal, "IPv4 link-local")]
    #[case("168.63.129.16", false, AddrClass::AzurePlatform, "Azure platform virtual IP")]
    #[case("168.63.129.17", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("223.255.255.255", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("224.0.0.1", false, AddrClass::Multicast, "IPv4 multicast")]
    #[case("239.255.255.255", false, AddrClass::Multicast, "IPv4 multicast")]
    #[case("255.255.255.255", false, AddrClass::Broadcast, "IPv4 limited broadcast")]
    #[case("0.0.0.0", false, AddrClass::Unspecified, "IPv4 unspecified")]
    #[case("0.1.2.3", false, AddrClass::Unspecified, "IPv4 \"this network\"")]
    #[case("1.0.0.0", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("192.0.2.10", true, AddrClass::Public, "RFC 5737 TEST-NET-1")]
    #[case("198.51.100.7", true, AddrClass::Public, "RFC 5737 TEST-NET-2")]
    #[case("203.0.113.255", true, AddrClass::Public, "RFC 5737 TEST-NET-3")]
    #[case("198.18.0.0", true, AddrClass::Public, "RFC 2544 benchmarking")]
    #[case("198.19.255.255", true, AddrClass::Public, "RFC 2544 benchmarking")]
    #[case("198.20.0.0", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("2606:4700::1111", true, AddrClass::Public, "IPv6 public (default)")]
    #[case("fc00::1", false, AddrClass::UniqueLocal, "IPv6 unique local")]
    #[case("fdff:ffff::1", false, AddrClass::UniqueLocal, "IPv6 unique local")]
    #[case("fe00::1", true, AddrClass::Public, "IPv6 public (default)")]
    #[case("fe80::1", false, AddrClass::LinkLocal, "IPv6 link-local")]
    #[case("febf:ffff::1", false, AddrClass::LinkLocal, "IPv6 link-local")]
    #[case("fec0::1", true, AddrClass::Public, "IPv6 public (default)")]
    #[case("::1", false, AddrClass::Loopback, "IPv6 loopback")]
    #[case("::", false, AddrClass::Unspecified, "IPv6 unspecified")]
    #[case("::2", true, AddrClass::Public, "IPv6 public (default)")]
    #[case("ff02::1", false, AddrClass::Multicast, "IPv6 multicast")]
    #[case("2001:db8::1", true, AddrClass::Public, "RFC 3849 IPv6 documentation")]
    #[case("2001:db9::1", true, AddrClass::Public, "IPv6 public (default)")]
    #[case("::ffff:10.0.0.1", false, AddrClass::Private, "RFC 1918 10/8")]
    #[case("::ffff:8.8.8.8", true, AddrClass::Public, "IPv4 public (default)")]
    #[case("::ffff:127.0.0.1", false, AddrClass::Loopback, "IPv4 loopback")]
    #[case("::ffff:169.254.169.254", false, AddrClass::Imds, "Azure IMDS")]
    fn builtin_verdicts(#[case] addr: &str, #[case] snat: bool, #[case] class: AddrClass, #[case] rule: &str) {
        let v = Policy::new().classify(ip(addr));
        assert_eq!((v.snat, v.class, v.rule.name.as_str()), (snat, class, rule), "{addr}");
        assert_eq!(v.rule.source, RuleSource::BuiltIn);
        assert_eq!(v.ip, ip(addr));
    }

    #[rstest]
    #[case("192.0.2.1", true)]
    #[case("198.18.5.5", true)]
    #[case("2001:db8:1::5", true)]
    #[case("::ffff:203.0.113.9", true)]
    #[case("8.8.8.8", false)]
    #[case("10.0.0.1", false)]
    fn documentation_flag(#[case] addr: &str, #[case] doc: bool) {
        let v = Policy::new().classify(ip(addr));
        assert_eq!(v.documentation, doc);
        if doc {
            assert!(v.snat, "documentation ranges are treated as public");
        }
    }

    #[test]
    fn mapped_verdict_says_so() {
        let v = Policy::new().classify(ip("::ffff:10.0.0.1"));
        assert!(
            v.note.as_deref().unwrap().contains("classified as 10.0.0.1"),
            "{:?}",
            v.note
        );
        let v = Policy::new().classify(ip("::ffff:168.63.129.16"));
        let note = v.note.unwrap();
        assert!(note.contains("IPv4-mapped") && note.contains("inference"), "{note}");
        assert!(Policy::new().classify(ip("10.0.0.1")).note.is_none());
    }

    #[test]
    fn user_private_ranges_and_labels() {
        let mut p = Policy::new();
        p.add_private("20.50.0.0/16", UserRangeKind::Vnet, Some("hub vnet"))
            .unwrap();
        p.add_private("20.50.7.0/24", UserRangeKind::Service, None).unwrap();
        let v = p.classify(ip("20.50.1.1"));
        assert_eq!(
            (v.snat, v.class, v.rule.name.as_str()),
            (false, AddrClass::Vnet, "hub vnet")
        );
        assert_eq!(v.rule.source, RuleSource::UserPrivate);
        assert_eq!(v.rule.kind, Some(UserRangeKind::Vnet));
        // Longest prefix wins within the user set.
        let v = p.classify(ip("20.50.7.9"));
        assert_eq!(
            (v.class, v.rule.name.as_str()),
            (AddrClass::ServiceCidr, "user service 20.50.7.0/24")
        );
        // User private beats a built-in public (documentation) rule.
        p.add_private("198.18.0.0/16", UserRangeKind::Other, None).unwrap();
        assert!(!p.classify(ip("198.18.1.1")).snat);
        assert!(p.classify(ip("198.19.1.1")).snat);
    }

    #[test]
    fn user_public_beats_everything() {
        let mut p = Policy::new();
        p.add_private("10.0.0.0/16", UserRangeKind::Vnet, None).unwrap();
        p.add_public("10.0.0.0/8", Some("behind firewall")).unwrap();
        // A shorter user-public prefix still beats a longer user-private one.
        let v = p.classify(ip("10.0.1.1"));
        assert_eq!(
            (v.snat, v.class, v.rule.name.as_str()),
            (true, AddrClass::Public, "behind firewall")
        );
        assert_eq!(v.rule.source, RuleSource::UserPublic);
        p.add_public("100.64.0.0/10", None).unwrap();
        assert!(p.classify(ip("100.64.3.3")).snat);
        assert!(p.classify(ip("::ffff:100.64.3.3")).snat);
    }

    #[test]
    fn cidr_forms() {
        let mut p = Policy::new();
        // Bare address, host bits set, and an IPv4-mapped IPv6 range.
        p.add_private("20.0.0.5", UserRangeKind::Other, None).unwrap();
        p.add_private("21.1.2.3/16", UserRangeKind::Pod, None).unwrap();
        p.add_private("::ffff:22.0.0.0/104", UserRangeKind::PeeredVnet, None)
            .unwrap();
        p.add_private(" fd12::/16 ", UserRangeKind::Vnet, None).unwrap();
        let cidrs: Vec<String> = p
            .rules()
            .iter()
            .filter(|r| r.source == RuleSource::UserPrivate)
            .map(|r| r.cidr.to_string())
            .collect();
        assert_eq!(cidrs, ["20.0.0.5/32", "21.1.0.0/16", "fd12::/16", "22.0.0.0/8"]);
        assert!(!p.classify(ip("22.9.9.9")).snat);
        assert!(!p.classify(ip("::ffff:22.9.9.9")).snat);
        // Re-adding a range replaces it rather than duplicating it.
        p.add_private("21.1.0.0/16", UserRangeKind::Service, Some("svc"))
            .unwrap();
        assert_eq!(
            p.rules().iter().filter(|r| r.cidr.to_string() == "21.1.0.0/16").count(),
            1
        );
        assert_eq!(p.classify(ip("21.1.0.1")).class, AddrClass::ServiceCidr);
    }

    #[rstest]
    #[case("")]
    #[case("10.0.0.0/33")]
    #[case("10.0.0/8")]
    #[case("vnet")]
    #[case("fd00::/129")]
    #[case("10.0.0.0/8/8")]
    fn bad_cidrs_are_errors(#[case] cidr: &str) {
        let mut p = Policy::new();
        let before = p.rules();
        let err = p.add_private(cidr, UserRangeKind::Vnet, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("invalid CIDR") && msg.contains(&format!("{cidr:?}")),
            "{msg}"
        );
        assert!(p.add_public(cidr, None).is_err());
        assert_eq!(p.rules(), before, "a bad CIDR must not change the policy");
    }

    #[rstest]
    #[case("vnet", UserRangeKind::Vnet)]
    #[case("peered-vnet", UserRangeKind::PeeredVnet)]
    #[case("peered_vnet", UserRangeKind::PeeredVnet)]
    #[case("POD", UserRangeKind::Pod)]
    #[case("service", UserRangeKind::Service)]
    #[case("other", UserRangeKind::Other)]
    fn range_kinds(#[case] s: &str, #[case] kind: UserRangeKind) {
        assert_eq!(s.parse::<UserRangeKind>().unwrap(), kind);
        assert_eq!(kind.as_str().parse::<UserRangeKind>().unwrap(), kind);
    }

    #[test]
    fn unknown_range_kind_lists_choices() {
        let msg = "subnet".parse::<UserRangeKind>().unwrap_err().to_string();
        assert!(msg.contains("subnet") && msg.contains("peered-vnet"), "{msg}");
    }

    #[test]
    fn rules_are_in_precedence_order() {
        let mut p = Policy::new();
        p.add_private("10.1.0.0/16", UserRangeKind::Vnet, None).unwrap();
        p.add_public("10.1.2.0/24", None).unwrap();
        let rules = p.rules();
        assert_eq!(rules[0].source, RuleSource::UserPublic);
        assert_eq!(rules[1].source, RuleSource::UserPrivate);
        assert!(rules[2..].iter().all(|r| r.source == RuleSource::BuiltIn));
        let builtin = &rules[2..];
        assert!(
            builtin
                .windows(2)
                .all(|w| w[0].cidr.prefix_len() >= w[1].cidr.prefix_len())
        );
    }

    #[test]
    fn verdict_json_shape() {
        let v = serde_json::to_value(Policy::new().classify(ip("169.254.169.254"))).unwrap();
        assert_eq!(v["snat"], false);
        assert_eq!(v["class"], "imds");
        assert_eq!(v["rule"]["cidr"], "169.254.169.254/32");
        assert_eq!(v["rule"]["source"], "built_in");
        assert!(v["note"].as_str().unwrap().contains("host"));
    }

    proptest! {
        #[test]
        fn mapped_classifies_like_ipv4(bits: u32) {
            let p = Policy::new();
            let a4 = Ipv4Addr::from(bits);
            let v4v = p.classify(IpAddr::V4(a4));
            let v6v = p.classify(IpAddr::V6(a4.to_ipv6_mapped()));
            prop_assert_eq!(v4v.snat, v6v.snat);
            prop_assert_eq!(v4v.class, v6v.class);
            prop_assert_eq!(&v4v.rule, &v6v.rule);
        }

        #[test]
        fn classification_is_total(hi: u64, lo: u64, bits: u32) {
            let p = Policy::new();
            let a6 = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
            let v = p.classify(IpAddr::V6(a6));
            prop_assert!(v.rule.cidr.contains(&v.ip) || a6.to_ipv4_mapped().is_some());
            let v = p.classify(IpAddr::V4(Ipv4Addr::from(bits)));
            prop_assert!(v.rule.cidr.contains(&v.ip));
            prop_assert_eq!(v.snat, v.class == AddrClass::Public);
        }

        #[test]
        fn user_overrides_win(bits: u32, pub_len in 0u8..=32, priv_len in 0u8..=32, with_public: bool) {
            let a4 = Ipv4Addr::from(bits);
            let mut p = Policy::new();
            let private = Ipv4Net::new(a4, priv_len).unwrap().trunc();
            p.add_private(&private.to_string(), UserRangeKind::Vnet, None).unwrap();
            let v = p.classify(IpAddr::V4(a4));
            prop_assert!(!v.snat);
            prop_assert_eq!(v.rule.source, RuleSource::UserPrivate);
            if with_public {
                let public = Ipv4Net::new(a4, pub_len).unwrap().trunc();
                p.add_public(&public.to_string(), None).unwrap();
                for addr in [IpAddr::V4(a4), IpAddr::V6(a4.to_ipv6_mapped())] {
                    let v = p.classify(addr);
                    prop_assert!(v.snat);
                    prop_assert_eq!(v.rule.source, RuleSource::UserPublic);
                }
            }
        }
    }
}
