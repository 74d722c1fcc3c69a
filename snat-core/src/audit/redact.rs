//! Keeping secrets out of audit records (the rule is in the module documentation of
//! [`crate::audit`]).

use std::collections::BTreeMap;

/// What a secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Words that make a key secret, matched as case-insensitive substrings.
const SECRET_KEY_WORDS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "key",
    "credential",
    "auth",
    "cookie",
    "session",
    "private",
    "cert",
    "bearer",
    "kubeconfig",
    "sas",
    "signature",
];

/// Substrings (case-insensitive) that make a value secret whatever its key.
const SECRET_VALUE_MARKERS: &[&str] = &[
    "-----begin",
    "client-key-data",
    "client-certificate-data",
    "token:",
    "sig=",
];

/// True when a parameter or argument named `key` holds a secret: its name contains, in any
/// case, one of `token`, `password`, `passwd`, `pwd`, `secret`, `key`, `credential`, `auth`,
/// `cookie`, `session`, `private`, `cert`, `bearer`, `kubeconfig`, `sas`, `signature`.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_WORDS.iter().any(|w| key.contains(w))
}

/// True when `value` looks like a secret whatever its key: a PEM block, a JSON Web Token,
/// kubeconfig credential data, a `Bearer `/`Basic ` authorization value, or a URL with a
/// shared-access signature (`sig=`).
pub fn looks_secret_value(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    if SECRET_VALUE_MARKERS.iter().any(|m| lower.contains(m)) {
        return true;
    }
    let trimmed = lower.trim_start();
    if trimmed.starts_with("bearer ") || trimmed.starts_with("basic ") {
        return true;
    }
    looks_like_jwt(value.trim())
}

/// Three non-empty base64url parts separated by dots, the first a JSON header (`eyJ`).
fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

/// `params` with the value of every secret-looking entry (by key, see [`is_secret_key`],
/// or by value, see [`looks_secret_value`]) replaced by [`REDACTED`].
pub fn redact_params(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) || looks_secret_value(v) {
                REDACTED.to_owned()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// `value` with, at any depth, the value of every object member whose key looks secret
/// (whatever its type) and every string that looks secret replaced by [`REDACTED`].
pub fn redact_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if looks_secret_value(s) => Value::String(REDACTED.to_owned()),
        Value::Array(items) => Value::Array(items.iter().map(redact_json).collect()),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redact_json(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// True for the word `Bearer` or `Basic` in any case (HTTP authentication schemes are
/// case-insensitive): the word after it is a credential.
fn is_auth_scheme(word: &str) -> bool {
    word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("basic")
}

/// A command line with every secret argument replaced by [`REDACTED`], word by word
/// (arguments are split on whitespace and joined again with single spaces): an argument
/// that looks secret itself ([`looks_secret_value`]); the value of a `NAME=VALUE` argument
/// (`--token=abc`, `PASSWORD=abc`) whose name is a secret key ([`is_secret_key`]); the
/// argument after a flag that is a secret key on its own, without `=` (`--password
/// hunter2`, `-token x`); and the argument after the word `Bearer` or `Basic` (in any
/// case), also when that word is itself the value of a secret flag (`--auth Bearer x`).
/// A flag with a value (`--header=Authorization:`) never makes the next argument secret:
/// only its name counts, and only when it has no value.
pub fn redact_cmdline(cmdline: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut redact_next = false;
    for word in cmdline.split_whitespace() {
        if redact_next {
            // `--auth Bearer x`: the scheme is the flag's value, the credential follows.
            redact_next = is_auth_scheme(word);
            out.push(REDACTED.to_owned());
            continue;
        }
        if let Some((name, value)) = word.split_once('=')
            && is_secret_key(name.trim_start_matches('-'))
        {
            redact_next = is_auth_scheme(value);
            out.push(format!("{name}={REDACTED}"));
        } else if looks_secret_value(word) {
            out.push(REDACTED.to_owned());
        } else {
            let flag = word.trim_start_matches('-');
            redact_next = is_auth_scheme(word)
                || word.starts_with('-') && !flag.is_empty() && !flag.contains('=') && is_secret_key(flag);
            out.push(word.to_owned());
        }
    }
    out.join(" ")
}

/// Findings as an audit record keeps them: [`redact_json`] at any depth, and every string
/// under a `cmdline` key through [`redact_cmdline`].
pub fn redact_findings(findings: &[serde_json::Value]) -> Vec<serde_json::Value> {
    fn cmdlines(value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::Array(items) => items.iter_mut().for_each(cmdlines),
            Value::Object(members) => {
                for (k, v) in members.iter_mut() {
                    match v {
                        Value::String(s) if k == "cmdline" => *s = redact_cmdline(s),
                        other => cmdlines(other),
                    }
                }
            }
            _ => {}
        }
    }
    findings
        .iter()
        .map(|f| {
            let mut f = redact_json(f);
            cmdlines(&mut f);
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case::token("token", true)]
    #[case::upper("GITHUB_TOKEN", true)]
    #[case::password("db-Password", true)]
    #[case::passwd("passwd", true)]
    #[case::secret("client_secret", true)]
    #[case::api_key("apiKey", true)]
    #[case::credential("credentials-file", true)]
    #[case::auth("Authorization", true)]
    #[case::kubeconfig("kubeconfig-content", true)]
    #[case::sas("sas_url", true)]
    #[case::cert("client-cert", true)]
    #[case::node("node", false)]
    #[case::duration("duration", false)]
    #[case::top("top", false)]
    #[case::namespace("namespace", false)]
    #[case::threshold("threshold", false)]
    fn secret_keys(#[case] key: &str, #[case] secret: bool) {
        assert_eq!(is_secret_key(key), secret, "{key}");
    }

    #[rstest]
    #[case::pem("-----BEGIN RSA PRIVATE KEY-----\nMIIE...", true)]
    #[case::jwt("eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", true)]
    #[case::bearer("Bearer abc.def", true)]
    #[case::basic("basic dXNlcjpwYXNz", true)]
    #[case::kubeconfig("apiVersion: v1\nusers:\n- user:\n    client-key-data: LS0t", true)]
    #[case::kube_token("users:\n- name: x\n  user:\n    token: abc", true)]
    #[case::sas_url("https://acct.blob.core.windows.net/c?sv=2022&sig=abc%3D", true)]
    #[case::node_name("aks-nodepool1-12345678-vmss000000", false)]
    #[case::duration("30s", false)]
    #[case::ip("10.224.0.4", false)]
    #[case::dotted_words("a.b.c", false)]
    #[case::empty("", false)]
    fn secret_values(#[case] value: &str, #[case] secret: bool) {
        assert_eq!(looks_secret_value(value), secret, "{value}");
    }

    #[test]
    fn redacts_params_by_key_and_value_and_keeps_the_rest() {
        let params: BTreeMap<String, String> = [
            ("node", "aks-nodepool1-0"),
            ("API_TOKEN", "hunter2"),
            ("Password", "p"),
            ("note", "-----BEGIN CERTIFICATE-----"),
            ("duration", "30s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let out = redact_params(&params);
        assert_eq!(out.len(), params.len());
        assert_eq!(out["node"], "aks-nodepool1-0");
        assert_eq!(out["duration"], "30s");
        assert_eq!(out["API_TOKEN"], REDACTED);
        assert_eq!(out["Password"], REDACTED);
        assert_eq!(out["note"], REDACTED);
        assert!(!format!("{out:?}").contains("hunter2"));
    }

    #[test]
    fn redacts_json_at_any_depth() {
        let v = json!({
            "node": "n1",
            "auth": {"user": "u", "password": "p"},
            "list": [{"token": 5}, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "plain"],
            "secret_ref": null,
        });
        let want = json!({
            "node": "n1",
            "auth": REDACTED,
            "list": [{"token": REDACTED}, REDACTED, "plain"],
            "secret_ref": null,
        });
        assert_eq!(redact_json(&v), want);
    }

    #[rstest]
    #[case::plain("java -jar app.jar --port 8080", "java -jar app.jar --port 8080")]
    #[case::flag_eq("app --token=abc --x=1", "app --token=<redacted> --x=1")]
    #[case::flag_space("mysql --password hunter2 -h db", "mysql --password <redacted> -h db")]
    #[case::env_style("env DB_PASSWORD=p run", "env DB_PASSWORD=<redacted> run")]
    #[case::bearer_word("curl -H Authorization: Bearer xyz", "curl -H Authorization: Bearer <redacted>")]
    #[case::bearer_any_case("curl -H authorization: BEARER xyz -v", "curl -H authorization: BEARER <redacted> -v")]
    #[case::basic_word("wget --header Basic dXNlcjpw x", "wget --header Basic <redacted> x")]
    #[case::header_flag_with_value(
        "curl --header=Authorization: Bearer xyz https://api",
        "curl --header=Authorization: Bearer <redacted> https://api"
    )]
    #[case::flag_value_with_a_secret_word("app --sort=key name", "app --sort=key name")]
    #[case::scheme_as_flag_value("app --auth Bearer xyz -v", "app --auth <redacted> <redacted> -v")]
    #[case::scheme_as_eq_value("app --auth=Bearer xyz -v", "app --auth=<redacted> <redacted> -v")]
    #[case::lone_dashes("app -- --secret", "app -- --secret")]
    #[case::jwt("cli eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "cli <redacted>")]
    #[case::trailing_flag("app --secret", "app --secret")]
    #[case::spaces("  a   b  ", "a b")]
    #[case::empty("", "")]
    fn cmdlines(#[case] cmdline: &str, #[case] want: &str) {
        assert_eq!(redact_cmdline(cmdline), want);
    }

    #[test]
    fn redacts_findings_at_any_depth_and_in_cmdlines() {
        let f = json!({
            "kind": "snat_culprit", "severity": "critical", "summary": "pod x",
            "process": {"pid": 7, "comm": "app", "cmdline": "app --api-key=k3y -v", "cgroup": null},
            "evidence": {"public_established": 120, "auth_header": "Basic dXNlcjpwYXNz",
                         "failed_by_destination": [{"destination": "203.0.113.5:443", "count": 3}]},
        });
        let out = redact_findings(std::slice::from_ref(&f));
        assert_eq!(out[0]["process"]["cmdline"], "app --api-key=<redacted> -v");
        assert_eq!(out[0]["evidence"]["auth_header"], REDACTED);
        assert_eq!(out[0]["evidence"]["public_established"], 120);
        assert_eq!(
            out[0]["evidence"]["failed_by_destination"],
            f["evidence"]["failed_by_destination"]
        );
        assert_eq!(out[0]["summary"], "pod x");
        assert_eq!(redact_findings(&out), out, "idempotent");
    }

    proptest::proptest! {
        #[test]
        fn redaction_is_idempotent_and_never_keeps_a_secret_key_value(
            params in proptest::collection::btree_map("[a-zA-Z_-]{1,12}", "\\PC{0,40}", 0..8)
        ) {
            let once = redact_params(&params);
            proptest::prop_assert_eq!(&redact_params(&once), &once);
            for (k, v) in &once {
                if is_secret_key(k) {
                    proptest::prop_assert_eq!(v.as_str(), REDACTED);
                } else if !looks_secret_value(&params[k]) {
                    proptest::prop_assert_eq!(v, &params[k]);
                }
            }
        }
    }
}
