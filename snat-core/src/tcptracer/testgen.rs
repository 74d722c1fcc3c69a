//! Generated `tcptracer -t4v`-shaped lines for the fast paths' property tests: columns that
//! are mostly right and sometimes subtly wrong, joined by varied blanks, so that every path
//! can be compared with the full parser on the same inputs.

use proptest::prelude::*;

/// Blanks between columns: mostly spaces, sometimes other bytes the parser treats as blank.
fn blanks() -> impl Strategy<Value = String> {
    prop_oneof![8 => " {1,8}", 1 => "[ \t\r\x0b\x01]{1,9}"]
}

/// The ten `-t4v` columns, mostly right, sometimes subtly wrong.
fn columns() -> impl Strategy<Value = Vec<String>> {
    let num = |valid: &'static str| prop_oneof![6 => valid, 1 => "[0-9]{1,21}", 1 => "0[0-9]{1,6}", 1 => "[0-9]{0,3}[a-z.:-][0-9]{0,3}"];
    let v4 = || {
        prop_oneof![
            6 => any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            2 => "(0|00|01|[0-9]{1,4})\\.([0-9]{1,4})\\.([0-9]{1,3})(\\.[0-9]{0,4}){0,2}",
            1 => "(25[6-9]|2[6-9][0-9]|300)\\.1\\.1\\.1",
            1 => any::<[u8; 16]>().prop_map(|o| format!("[{}]", std::net::Ipv6Addr::from(o))),
            // IPv4-mapped (ranked as IPv4), as tcptracer and snat print them.
            1 => any::<[u8; 4]>().prop_map(|o| format!("[{}]", std::net::Ipv4Addr::from(o).to_ipv6_mapped())),
            1 => "\\[?[0-9a-f:]{2,20}\\]?",
        ]
    };
    (
        prop_oneof![6 => "[0-9]{1,20}", 1 => "[0-9]{21}", 1 => "[0-9]{1,5}\\.[0-9]{3}", 1 => "-", 1 => Just(String::new()), 1 => "[0-9]{14}connect"],
        prop_oneof![
            8 => prop_oneof![Just("connect"), Just("accept"), Just("close"), Just("failed_connect"), Just("unknown")],
            1 => prop_oneof![
                Just("C"), Just("X"), Just("A"), Just("F"), Just("U"), Just("connects"), Just("Connect"),
                Just("conne"), Just("TIME(ns)"), Just("Possibly")
            ],
        ],
        num("[1-9][0-9]{0,9}"),
        prop_oneof![4 => "[a-z][a-z0-9_-]{0,14}", 1 => "[ -~]{0,20}", 1 => Just(String::new()), 1 => "[a-z]{1,5} [a-z]{1,5}"],
        prop_oneof![8 => Just("4".to_string()), 1 => Just("6".to_string()), 1 => "[0-9a-z]{1,2}"],
        (v4(), v4()),
        (num("[0-9]{1,5}"), num("[0-9]{1,5}")),
        prop_oneof![6 => "[1-9][0-9]{0,19}", 1 => "[0-9]{20,21}", 1 => Just("-".to_string()), 1 => Just(String::new())],
    )
        .prop_map(|(t, k, pid, comm, fam, (sa, da), (sp, dp), ns)| vec![t, k.to_string(), pid, comm, fam, sa, da, sp, dp, ns])
}

/// One line from [`columns`] and [`blanks`], with or without leading and trailing blanks.
pub(super) fn structured_line() -> impl Strategy<Value = Vec<u8>> {
    (
        columns(),
        proptest::collection::vec(blanks(), 11),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cols, gaps, lead, trail)| {
            let mut s = String::new();
            if lead {
                s.push_str(&gaps[0]);
            }
            for (c, g) in cols.iter().zip(&gaps[1..]) {
                s.push_str(c);
                s.push_str(g);
            }
            if !trail {
                s.truncate(s.trim_end_matches([' ', '\t', '\r', '\x0b', '\x01']).len());
            }
            s.into_bytes()
        })
}
