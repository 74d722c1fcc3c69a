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
    "cert",
    "bearer",
    "kubeconfig",
    "sas",
    "signature",
    "connectionstring",
    "connstr",
];

/// Short words that make a key secret only as a whole word of it (`gh_pat`, `sig`,
/// `db-pass`), not inside another word (`path`, `design`, `spin`).
const SECRET_KEY_WHOLE_WORDS: &[&str] = &["pat", "sig", "otp", "pin", "pass"];

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
/// `cookie`, `session`, `cert`, `bearer`, `kubeconfig`, `sas`, `signature`, `connectionstring`,
/// `connstr` (separators ignored: `connection_string`), or has one of `pat`, `sig`, `otp`,
/// `pin`, `pass` as a whole word (`gh_pat`, `db-pass`; not `path`). `private_key` is caught
/// by `key`; `private` alone is the playbooks' list of CIDRs that use no SNAT.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let flat: String = key.chars().filter(char::is_ascii_alphanumeric).collect();
    SECRET_KEY_WORDS.iter().any(|w| flat.contains(w))
        || key
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| SECRET_KEY_WHOLE_WORDS.contains(&word))
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

/// Free text (a message, an error, a summary) with every secret-looking part replaced by
/// [`REDACTED`] and everything else kept as it is, whitespace and line breaks included:
///
/// - a PEM block, from `-----BEGIN` to the end of its `-----END …-----` line (to the end
///   of the text when it has none);
/// - a line `NAME: VALUE` (YAML, an HTTP header; after indentation and an optional `- `)
///   whose name is a secret key ([`is_secret_key`]) and whose value is one word:
///   `token: abc`, `client-key-data: LS0t…`;
/// - a JSON Web Token (`eyJ…` with two or three dot-separated base64url parts) anywhere in a
///   word, e.g. `note=eyJ…`;
/// - the value of a `NAME=VALUE` pair inside a word whose name is a secret key or `sig` (a
///   shared-access signature), also inside a URL's query string: `--token=abc`,
///   `?sv=2022&sig=abc&se=…` (`?sv=2022&sig=<redacted>&se=…`). A value that starts with a
///   quote ends at the closing quote; any other ends at `&`, at a quote not escaped by a
///   backslash, or at the end of the word, whose closing punctuation (`:`, `,`, `;`, `.`,
///   `)`, `]`, `}`) is kept: `open /x?sig=abc: denied` gives `open /x?sig=<redacted>:
///   denied`. The placeholder `VALUE` of a usage message (`--param KEY=VALUE`) is
///   kept;
/// - the word after `Bearer` or `Basic` (in any case), but for its closing punctuation or
///   quote: `Authorization: Bearer <redacted>`.
///
/// It is idempotent. Words are split on whitespace only, so a secret that holds spaces is
/// caught only by one of the rules above.
pub fn redact_text(text: &str) -> String {
    redact_text_noting(text, &mut |_| {})
}

/// [`redact_text`], calling `note` with each part it redacts.
fn redact_text_noting(text: &str, note: &mut dyn FnMut(&str)) -> String {
    let text = redact_pem(text, note);
    let mut out = String::with_capacity(text.len());
    let mut redact_next = false;
    for line in text.split_inclusive('\n') {
        if let Some(value) = secret_line_value(line) {
            if &line[value.clone()] != REDACTED {
                note(&line[value.clone()]);
            }
            out.push_str(&line[..value.start]);
            out.push_str(REDACTED);
            out.push_str(&line[value.end..]);
            redact_next = false;
            continue;
        }
        let mut rest = line;
        while !rest.is_empty() {
            let space = rest.len() - rest.trim_start().len();
            out.push_str(&rest[..space]);
            rest = &rest[space..];
            if rest.is_empty() {
                break;
            }
            let word_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push_str(&redact_word(&rest[..word_len], &mut redact_next, note));
            rest = &rest[word_len..];
        }
    }
    out
}

/// Replaces every PEM block of `text`.
fn redact_pem(text: &str, note: &mut dyn FnMut(&str)) -> String {
    const BEGIN: &str = "-----begin";
    const END: &str = "-----end";
    // ASCII lower-casing keeps every byte offset.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    while let Some(found) = lower[copied..].find(BEGIN) {
        let start = copied + found;
        let end = match lower[start + BEGIN.len()..].find(END) {
            None => text.len(),
            Some(e) => {
                let after_end = start + BEGIN.len() + e + END.len();
                let line_end = lower[after_end..].find('\n').map_or(text.len(), |n| after_end + n);
                lower[after_end..line_end]
                    .find("-----")
                    .map_or(line_end, |d| after_end + d + "-----".len())
            }
        };
        out.push_str(&text[copied..start]);
        note(&text[start..end]);
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Bytes of a key name in `NAME=VALUE` and `NAME: VALUE`.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// True for the name of a `NAME=VALUE` pair or `NAME: VALUE` line whose value is secret.
fn is_secret_name(name: &str) -> bool {
    let name = name.trim_start_matches('-');
    !name.is_empty() && (is_secret_key(name) || name.eq_ignore_ascii_case("sig"))
}

/// For a line `NAME: VALUE` with a secret name and a one-word value (see [`redact_text`]),
/// redacted already or not: where the value is.
fn secret_line_value(line: &str) -> Option<std::ops::Range<usize>> {
    let body = line.trim_start();
    let body = body.strip_prefix("- ").map_or(body, str::trim_start);
    let name_len = body.bytes().take_while(|&b| is_name_byte(b)).count();
    let after = body[name_len..].strip_prefix(':')?;
    let value = after.trim_start();
    if value.len() == after.len() || !is_secret_name(&body[..name_len]) {
        return None;
    }
    let start = line.len() - value.len();
    let value = value.trim_end();
    if value.is_empty() || value.contains(char::is_whitespace) {
        return None;
    }
    Some(start..start + value.len())
}

/// Bytes of a base64url word (the parts of a JSON Web Token), with padding.
fn is_base64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=')
}

/// Where a JSON Web Token that starts at `at` (with `eyJ`) ends: a header of more than
/// the `eyJ`, a non-empty payload, and a signature that may be empty (an unsigned token).
fn jwt_end(word: &[u8], at: usize) -> Option<usize> {
    let part = |from: usize| from + word[from..].iter().take_while(|&&b| is_base64url_byte(b)).count();
    let header_end = part(at);
    if header_end - at <= 3 || word.get(header_end) != Some(&b'.') {
        return None;
    }
    let payload_end = part(header_end + 1);
    if payload_end == header_end + 1 || word.get(payload_end) != Some(&b'.') {
        return None;
    }
    Some(part(payload_end + 1))
}

/// The value of a `NAME=VALUE` pair whose `=` is at `eq`, as a range of `word`: inside
/// quotes when it starts with one (to the closing quote or the end of the word); else to
/// `&`, a quote not escaped by a backslash, or the end of the word, without the
/// punctuation that ends a clause there (`:`, `,`, `;`, `.`, `)`, `]`, `}`).
fn pair_value(word: &[u8], eq: usize) -> std::ops::Range<usize> {
    let is_quote = |b: u8| matches!(b, b'"' | b'\'' | b'`');
    let from = eq + 1;
    if let Some(&q) = word.get(from).filter(|&&b| is_quote(b)) {
        let end = (from + 1..word.len())
            .find(|&i| word[i] == q && word[i - 1] != b'\\')
            .unwrap_or(word.len());
        return from + 1..end;
    }
    match (from..word.len()).find(|&i| word[i] == b'&' || is_quote(word[i]) && word[i - 1] != b'\\') {
        Some(end) => from..end,
        None => {
            let kept = word[from..]
                .iter()
                .rev()
                .take_while(|&&b| matches!(b, b':' | b',' | b';' | b'.' | b')' | b']' | b'}'))
                .count();
            from..word.len() - kept
        }
    }
}

/// True for the placeholder of a usage message, `VALUE` (`--param KEY=VALUE`, clap's
/// `<KEY=VALUE>`): a text that explains how to pass a secret holds none.
fn is_placeholder(value: &str) -> bool {
    let value = value.strip_prefix('<').unwrap_or(value);
    value.strip_suffix('>').unwrap_or(value) == "VALUE"
}

/// One whitespace-free word of [`redact_text`]; `redact_next` carries "the previous word
/// was `Bearer`" from word to word.
fn redact_word(word: &str, redact_next: &mut bool, note: &mut dyn FnMut(&str)) -> String {
    if std::mem::take(redact_next) {
        if let Some(rest) = word.strip_prefix(REDACTED) {
            // Redacted already: what follows is a word of its own.
            return format!("{REDACTED}{}", redact_word(rest, redact_next, note));
        }
        // The credential, without the punctuation that closes a clause after it.
        let kept = word
            .bytes()
            .rev()
            .take_while(|&b| matches!(b, b':' | b',' | b';' | b'.' | b')' | b']' | b'}' | b'"' | b'\'' | b'`'))
            .count();
        let len = if kept == word.len() {
            word.len()
        } else {
            word.len() - kept
        };
        note(&word[..len]);
        return format!("{REDACTED}{}", &word[len..]);
    }
    if is_auth_scheme(word.trim_matches(|c: char| !c.is_ascii_alphanumeric())) {
        *redact_next = true;
        return word.to_owned();
    }
    let without_userinfo = redact_userinfo(word, note);
    let word = without_userinfo.as_str();
    let b = word.as_bytes();
    let mut out = String::with_capacity(word.len());
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i..].starts_with(b"eyJ")
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && let Some(end) = jwt_end(b, i)
        {
            out.push_str(&word[copied..i]);
            note(&word[i..end]);
            out.push_str(REDACTED);
            (i, copied) = (end, end);
            continue;
        }
        if b[i] == b'=' {
            let name_start = b[..i].iter().rposition(|&c| !is_name_byte(c)).map_or(0, |p| p + 1);
            let range = pair_value(b, i);
            let value = &word[range.clone()];
            if is_secret_name(&word[name_start..i]) && !value.is_empty() && value != REDACTED && !is_placeholder(value)
            {
                out.push_str(&word[copied..range.start]);
                note(value);
                out.push_str(REDACTED);
                *redact_next = is_auth_scheme(value);
                (i, copied) = (range.end, range.end);
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&word[copied..]);
    out
}

/// `word` with the password of every URL's user information (`https://user:PASSWORD@host`)
/// redacted.
fn redact_userinfo(word: &str, note: &mut dyn FnMut(&str)) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_len = tail.find(['/', '?', '#']).unwrap_or(tail.len());
        let authority = &tail[..authority_len];
        match authority
            .rfind('@')
            .and_then(|end| Some((authority[..end].find(':')?, end)))
        {
            Some((colon, end)) if end > colon + 1 && &authority[colon + 1..end] != REDACTED => {
                note(&authority[colon + 1..end]);
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[end..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_len..];
    }
    out.push_str(rest);
    out
}

/// True when the parameter `key=value` is secret: snat hides its value, whole or in part,
/// wherever it shows it ([`redact_params`] changes it): a secret key ([`is_secret_key`]),
/// a secret-looking value ([`looks_secret_value`]), or a value with a secret part
/// ([`redact_text`], e.g. a URL's password).
pub fn is_secret_param(key: &str, value: &str) -> bool {
    is_secret_key(key) || looks_secret_value(value) || redact_text(value) != value
}

/// `params` with the value of every secret-looking entry (by key, see [`is_secret_key`],
/// or by value, see [`looks_secret_value`]) replaced by [`REDACTED`], and the secret parts
/// of the other values redacted by [`redact_text`].
pub fn redact_params(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) || looks_secret_value(v) {
                REDACTED.to_owned()
            } else {
                redact_text(v)
            };
            (k.clone(), v)
        })
        .collect()
}

/// `value` with, at any depth, the value of every object member whose key looks secret
/// (whatever its type) and every string that looks secret replaced by [`REDACTED`], and
/// the secret parts of the other strings redacted by [`redact_text`].
pub fn redact_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if looks_secret_value(s) => Value::String(REDACTED.to_owned()),
        Value::String(s) => Value::String(redact_text(s)),
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
/// that looks secret itself ([`looks_secret_value`]); the secret part of an argument
/// ([`redact_text`]: `note=<redacted>` for `note=eyJ…`); the value of a `NAME=VALUE` argument
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
            // A token inside the argument (`note=eyJ…`, `https://…?sig=…`).
            out.push(redact_text(word));
        }
    }
    out.join(" ")
}

/// Findings as an audit record keeps them: [`redact_json`] at any depth (so every string,
/// the `summary` too, is either replaced whole or has its secret parts redacted by
/// [`redact_text`]), and every string under a `cmdline` key through [`redact_cmdline`].
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

/// The fewest characters a secret value needs for [`SecretValues`] to look for it in a
/// record's text: shorter values (`1`, `on`, `abc`) would redact every number and many
/// words of every message.
pub const MIN_SECRET_VALUE_CHARS: usize = 4;

/// Values that are never looked for in a record's text, whatever their key: a flag's
/// `true` or `false` is no secret, and redacting it everywhere would ruin the record.
const NOT_SECRET_VALUES: &[&str] = &["true", "false", "yes", "null", "none"];

/// The secret values a run was given (the raw values of the parameters that
/// [`redact_params`] redacts, and the parts that [`redact_text`] redacts from the others),
/// to find them again wherever they were copied into a record: an error message that
/// quotes a parameter (`"hunter2" is not an integer`), a stage error naming a secret path,
/// a finding's summary.
///
/// A value is looked for trimmed, as it is and escaped as Rust's `{:?}` and JSON would
/// write it inside quotes. A value of several words (`abc def ghi`) is found whatever
/// separates its words in the text, as long as something does: any run of whitespace (a
/// line break, a tab, several spaces: a message that wraps it, a command line joined again
/// with single spaces) or of the escapes `\n`, `\r`, `\t`, escaped once or more (the value
/// inside a JSON or `{:?}` string). Values shorter than [`MIN_SECRET_VALUE_CHARS`] characters, `true`,
/// `false`, `yes`, `null`, `none` (in any case) and parts of the marker `<redacted>` itself
/// are not looked for: they are too common to replace everywhere. The words of a value are
/// not looked for on their own, only together.
///
/// Its `Debug` output shows how many forms it holds, never the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues {
    /// Every form to look for, as its words (whatever separates them in a text), longest
    /// first.
    forms: Vec<Vec<String>>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValues({} forms, redacted)", self.forms.len())
    }
}

/// How many bytes at the start of `text` separate two words of a secret value: one
/// whitespace character, or one of the escapes `\n`, `\r`, `\t`, escaped again any number
/// of times (`\\n`: a JSON string quoted by `{:?}`); 0 for none.
fn separator_len(text: &str) -> usize {
    match text.chars().next() {
        Some(c) if c.is_whitespace() => c.len_utf8(),
        Some('\\') => {
            let slashes = text.bytes().take_while(|&b| b == b'\\').count();
            if matches!(text.as_bytes().get(slashes), Some(b'n' | b'r' | b't')) {
                slashes + 1
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// The length of the occurrence of `words` that starts at the start of `text`, if one
/// does: the first word, then for each next one at least one separator
/// ([`separator_len`]) and the word (after as few separators as it takes).
fn match_len(text: &str, words: &[String]) -> Option<usize> {
    let (first, rest) = words.split_first()?;
    let mut at = first.len();
    if !text.starts_with(first.as_str()) {
        return None;
    }
    for word in rest {
        let mut seps = 0;
        loop {
            let n = separator_len(&text[at..]);
            if n == 0 {
                break;
            }
            at += n;
            seps += 1;
            if text[at..].starts_with(word.as_str()) {
                break;
            }
        }
        if seps == 0 || !text[at..].starts_with(word.as_str()) {
            return None;
        }
        at += word.len();
    }
    Some(at)
}

impl SecretValues {
    /// The secret values of `params` (the `--param` pairs as given, before redaction): the
    /// value of every entry [`redact_params`] replaces, and every part [`redact_text`]
    /// redacts from a value, of any entry.
    pub fn from_params(params: &BTreeMap<String, String>) -> SecretValues {
        let mut secrets = SecretValues::default();
        for (k, v) in params {
            if is_secret_key(k) || looks_secret_value(v) {
                secrets.insert(v);
                // A list parameter (`-p api_keys=a,b`) is used element by element.
                for part in v.split(',') {
                    secrets.insert(part);
                }
            }
            redact_text_noting(v, &mut |part| {
                secrets.insert(part);
            });
        }
        secrets
    }

    /// Adds `value` (see [`SecretValues`] for the forms looked for); false when it is too
    /// short or too common to be looked for.
    pub fn insert(&mut self, value: &str) -> bool {
        let trimmed = value.trim();
        if trimmed.chars().count() < MIN_SECRET_VALUE_CHARS
            || NOT_SECRET_VALUES.iter().any(|w| trimmed.eq_ignore_ascii_case(w))
            || REDACTED.contains(trimmed)
        {
            return false;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        let quoted = |s: &str, json: bool| {
            let q = if json {
                serde_json::to_string(s).unwrap_or_default()
            } else {
                format!("{s:?}")
            };
            q.get(1..q.len().saturating_sub(1)).unwrap_or_default().to_owned()
        };
        let forms = [
            words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>(),
            words.iter().map(|w| quoted(w, false)).collect(),
            words.iter().map(|w| quoted(w, true)).collect(),
        ];
        for form in forms {
            if form.iter().all(|w| !w.is_empty()) && !self.forms.contains(&form) {
                self.forms.push(form);
            }
        }
        let len = |f: &Vec<String>| f.iter().map(String::len).sum::<usize>() + f.len();
        self.forms.sort_by(|a, b| len(b).cmp(&len(a)).then_with(|| a.cmp(b)));
        true
    }

    /// True when there is no value to look for.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Where the forms occur in `text`, overlapping occurrences merged, in order.
    fn spans(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
        for form in &self.forms {
            let Some(first) = form.first() else { continue };
            let mut from = 0;
            while let Some(at) = text[from..].find(first.as_str()) {
                let start = from + at;
                if let Some(len) = match_len(&text[start..], form) {
                    spans.push(start..start + len);
                }
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        spans.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
        let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(spans.len());
        for r in spans {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// `text` with every occurrence of a secret value replaced by [`REDACTED`] (adjacent or
    /// overlapping occurrences by one). Whatever the text, no value survives: should the
    /// replacement itself form a value again with its neighbours, the pass is repeated, and
    /// after a few passes the whole text is replaced.
    pub fn redact(&self, text: &str) -> String {
        const PASSES: usize = 4;
        let mut out = text.to_owned();
        for _ in 0..PASSES {
            let spans = self.spans(&out);
            if spans.is_empty() {
                return out;
            }
            let mut next = String::with_capacity(out.len());
            let mut copied = 0;
            for r in spans {
                next.push_str(&out[copied..r.start]);
                next.push_str(REDACTED);
                copied = r.end;
            }
            next.push_str(&out[copied..]);
            out = next;
        }
        if self.spans(&out).is_empty() {
            out
        } else {
            REDACTED.to_owned()
        }
    }

    /// `value` with [`SecretValues::redact`] applied to every string at any depth (object
    /// keys are kept: they are names, not data).
    pub fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.is_empty() {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.redact_json(v)).collect()),
            Value::Object(members) => {
                Value::Object(members.iter().map(|(k, v)| (k.clone(), self.redact_json(v))).collect())
            }
            other => other.clone(),
        }
    }
}

/// What [`AuditDir::write`](super::AuditDir::write) does to a record before writing it:
/// every occurrence of `secrets` is replaced in `playbook.path`, `params`, stage `args` and
/// `error`, the actions' `target`, `request` and `result`, `outcome.message` and
/// `findings`; then `params` go through [`redact_params`], stage `args` through
/// [`redact_json`], stage `error` and `outcome.message` through [`redact_text`],
/// `findings` through [`redact_findings`]. The values come first: a rule of
/// [`redact_text`] that ends a value at a space (`token=abc def`) would otherwise cut a
/// value of several words, and leave its other words for no one to find.
pub(super) fn redact_record(record: &mut super::AuditRecord, secrets: &SecretValues) {
    let text = |s: &str| redact_text(&secrets.redact(s));
    record.playbook.path = secrets.redact(&record.playbook.path);
    let params = record
        .params
        .iter()
        .map(|(k, v)| (k.clone(), secrets.redact(v)))
        .collect();
    record.params = redact_params(&params);
    for stage in &mut record.stages {
        stage.args = redact_json(&secrets.redact_json(&stage.args));
        stage.error = stage.error.as_deref().map(text);
    }
    for action in &mut record.actions {
        if let Some(c) = &mut action.cluster {
            c.server = text(&c.server);
        }
        action.target = secrets.redact(&action.target);
        action.request = secrets.redact_json(&action.request);
        action.result = action.result.as_deref().map(|r| secrets.redact(r));
    }
    record.outcome.message = record.outcome.message.as_deref().map(text);
    let findings: Vec<serde_json::Value> = record.findings.iter().map(|f| secrets.redact_json(f)).collect();
    record.findings = redact_findings(&findings);
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
    #[case::pat("gh_pat", true)]
    #[case::sig("sig", true)]
    #[case::pass("db-pass", true)]
    #[case::connection_string("connection_string", true)]
    #[case::path("path", false)]
    #[case::design("design", false)]
    #[case::private_cidrs("private", false)]
    #[case::private_key("ssh_private_key", true)]
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
        let mut params = params;
        params.insert("msg".into(), "call with token=hunter3 and  more".into());
        let out = redact_params(&params);
        assert_eq!(out.len(), params.len());
        assert_eq!(out["msg"], "call with token=<redacted> and  more");
        assert_eq!(out["node"], "aks-nodepool1-0");
        assert_eq!(out["duration"], "30s");
        assert_eq!(out["API_TOKEN"], REDACTED);
        assert_eq!(out["Password"], REDACTED);
        assert_eq!(out["note"], REDACTED);
        assert!(!format!("{out:?}").contains("hunter2"));
        assert!(!format!("{out:?}").contains("hunter3"));
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
    #[case::bearer_any_case(
        "curl -H authorization: BEARER xyz -v",
        "curl -H authorization: BEARER <redacted> -v"
    )]
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
    #[case::jwt_in_an_argument("cli --note=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "cli --note=<redacted>")]
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

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    #[rstest]
    #[case::plain(
        "stage tcptracer::read failed: no such file",
        "stage tcptracer::read failed: no such file"
    )]
    #[case::jwt_in_a_pair(&format!("note={JWT} seen"), "note=<redacted> seen")]
    #[case::jwt_quoted(&format!("token \"{JWT}\" expired"), "token \"<redacted>\" expired")]
    #[case::unsigned_jwt("s=eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. end", "s=<redacted> end")]
    #[case::jwt_needs_a_word_start("keyJhbGci.eyJzdWIi.c2ln", "keyJhbGci.eyJzdWIi.c2ln")]
    #[case::sig_in_a_path(
        "cannot open /nonexistent?sig=SECRETSIG: No such file or directory (os error 2)",
        "cannot open /nonexistent?sig=<redacted>: No such file or directory (os error 2)"
    )]
    #[case::sas_query(
        "GET https://a.blob.core.windows.net/c/x?sv=2022-11-02&se=2026-01-01&sig=ab%2Bc%3D&sp=r: 403",
        "GET https://a.blob.core.windows.net/c/x?sv=2022-11-02&se=2026-01-01&sig=<redacted>&sp=r: 403"
    )]
    #[case::secret_pair(
        "run --token=abc -v and DB_PASSWORD=p2, then",
        "run --token=<redacted> -v and DB_PASSWORD=<redacted>, then"
    )]
    #[case::quoted_pair(
        "args {\"path\":\"/x?sig=abc\"} and key='k 1'",
        "args {\"path\":\"/x?sig=<redacted>\"} and key='<redacted> 1'"
    )]
    #[case::escaped_quote("parameter \"token=a\\\"b\"", "parameter \"token=<redacted>\"")]
    #[case::harmless_pair("top=10 node=aks-0 design=x", "top=10 node=aks-0 design=x")]
    #[case::usage_placeholder(
        "'--param <KEY=VALUE>': expected KEY=VALUE; pass --param token=VALUE",
        "'--param <KEY=VALUE>': expected KEY=VALUE; pass --param token=VALUE"
    )]
    #[case::bearer("Authorization: Bearer abc.def, then", "Authorization: Bearer <redacted>, then")]
    #[case::basic_across_a_line("Basic\ndXNlcjpwYXNz end", "Basic\n<redacted> end")]
    #[case::scheme_as_value("auth=Bearer abc x", "auth=<redacted> <redacted> x")]
    #[case::scheme_then_a_redacted_word("auth=Bearer <redacted>token=x", "auth=<redacted> <redacted>token=<redacted>")]
    #[case::yaml_lines(
        "users:\n- name: u\n  user:\n    token: abc123\n    client-key-data: LS0tLS1\n",
        "users:\n- name: u\n  user:\n    token: <redacted>\n    client-key-data: <redacted>\n"
    )]
    #[case::yaml_list_item("  - password: hunter2", "  - password: <redacted>")]
    #[case::url_userinfo(
        "cannot read https://svc:PaSsW0rd77@files.example/x.log: 404",
        "cannot read https://svc:<redacted>@files.example/x.log: 404"
    )]
    #[case::url_user_only("see https://svc@files.example/x", "see https://svc@files.example/x")]
    #[case::line_with_a_sentence("kubeconfig: cannot read ~/.kube/config", "kubeconfig: cannot read ~/.kube/config")]
    #[case::key_word_in_prose(
        "the token file is missing: key not found",
        "the token file is missing: key not found"
    )]
    #[case::pem(
        "bad key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\nabc\n-----END RSA PRIVATE KEY-----\nafter  two  spaces\n",
        "bad key:\n<redacted>\nafter  two  spaces\n"
    )]
    #[case::truncated_pem("cert -----BEGIN CERTIFICATE-----\nMIIB", "cert <redacted>")]
    #[case::whitespace_kept("  a\t b  \n\n c ", "  a\t b  \n\n c ")]
    #[case::non_ascii("évian=1 ük_token=é中 x", "évian=1 ük_token=<redacted> x")]
    #[case::empty("", "")]
    fn redacts_secret_parts_of_text(#[case] text: &str, #[case] want: &str) {
        assert_eq!(redact_text(text), want);
        assert_eq!(redact_text(want), want, "idempotent");
    }

    #[test]
    fn redacts_a_jwt_inside_a_finding_summary() {
        let f = json!({"kind": "k", "severity": "info", "summary": format!("seen note={JWT} twice"),
                       "evidence": {"list": [format!("x {JWT}")]}});
        let out = redact_findings(std::slice::from_ref(&f));
        assert_eq!(out[0]["summary"], "seen note=<redacted> twice");
        assert_eq!(out[0]["evidence"]["list"][0], "x <redacted>");
    }

    /// Words that no rule of [`redact_text`] touches.
    fn plain_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        proptest::collection::vec(("[a-z0-9/.,()-]{1,8}", "[ \t\n]{1,3}"), 0..8)
            .prop_map(|ws| ws.into_iter().map(|(w, s)| format!("{w}{s}")).collect::<String>())
            .prop_filter("no scheme word", |t| {
                !t.split_whitespace()
                    .any(|w| is_auth_scheme(w.trim_matches(|c: char| !c.is_ascii_alphanumeric())))
            })
    }

    #[rstest]
    #[case::one("1", false)]
    #[case::short("abc", false)]
    #[case::short_after_trim("  abc \n", false)]
    #[case::boolean("true", false)]
    #[case::boolean_upper("FALSE", false)]
    #[case::part_of_the_marker("dact", false)]
    #[case::four("abcd", true)]
    #[case::password("hunter2", true)]
    #[case::non_ascii("pässwörd", true)]
    fn which_secret_values_are_looked_for(#[case] value: &str, #[case] kept: bool) {
        let mut s = SecretValues::default();
        assert_eq!(s.insert(value), kept, "{value:?}");
        assert_eq!(s.is_empty(), !kept);
    }

    #[rstest]
    #[case::quoted_by_debug(
        &["SuperSecretValue123"],
        "parameter `token`: \"SuperSecretValue123\" is not an integer",
        "parameter `token`: \"<redacted>\" is not an integer"
    )]
    #[case::in_a_path(
        &["/nonexistent?sig=SECRETSIG"],
        "cannot open /nonexistent?sig=SECRETSIG: No such file",
        "cannot open <redacted>: No such file"
    )]
    #[case::escaped_by_debug(&["a\"b\\cdef"], "bad value \"a\\\"b\\\\cdef\" here", "bad value \"<redacted>\" here")]
    #[case::escaped_by_json(&["tab\tsecret"], "{\"v\":\"tab\\tsecret\"}", "{\"v\":\"<redacted>\"}")]
    #[case::trimmed(&["  spaced-secret\n"], "got spaced-secret.", "got <redacted>.")]
    #[case::every_occurrence(&["hunter2"], "hunter2 and hunter2hunter2, hunter22", "<redacted> and <redacted>, <redacted>2")]
    #[case::overlapping(&["abcdef", "defghi"], "xabcdefghix", "x<redacted>x")]
    #[case::multi_line(&["hunter2"], "line 1\n  hunter2  \n\tend", "line 1\n  <redacted>  \n\tend")]
    #[case::short_values_are_left(&["1", "on", "true"], "line 1: on is true", "line 1: on is true")]
    #[case::formed_again_by_the_marker(&["d>zz"], "d>zzzz", "<redacte<redacted>")]
    #[case::nothing(&[], "hunter2", "hunter2")]
    #[case::spaced_value(&["abc def ghi"], "bad token abc def ghi here", "bad token <redacted> here")]
    #[case::spaced_value_wrapped(&["abc def ghi"], "bad token abc def\n   ghi here", "bad token <redacted> here")]
    #[case::spaced_value_respaced(&["abc  def\tghi"], "run abc def ghi", "run <redacted>")]
    #[case::spaced_value_json_escaped(&["abc def ghi"], "{\"m\":\"abc def\\nghi\"}", "{\"m\":\"<redacted>\"}")]
    #[case::spaced_value_debug_quoted(&["say \"hi\" now"], "got \"say \\\"hi\\\"\\n now\"", "got \"<redacted>\"")]
    #[case::trailing_newline(&["hunter22\n"], "x hunter22\ny", "x <redacted>\ny")]
    #[case::words_alone_are_not_the_value(&["abcd efgh"], "abcd and efgh", "abcd and efgh")]
    #[case::words_need_a_separator(&["abc def"], "abcdef", "abcdef")]
    #[case::one_character(&["a"], "a banana", "a banana")]
    #[case::three_characters(&["a b"], "a b c", "a b c")]
    fn redacts_every_occurrence_of_a_secret_value(#[case] values: &[&str], #[case] text: &str, #[case] want: &str) {
        let mut s = SecretValues::default();
        for v in values {
            s.insert(v);
        }
        assert_eq!(s.redact(text), want);
    }

    #[test]
    fn secret_values_of_params_are_the_redacted_ones() {
        let params: BTreeMap<String, String> = [
            ("token", "SuperSecretValue123"),
            ("log", "/nonexistent?sig=SECRETSIG"),
            ("note", "call with password=hunter22 now"),
            ("node", "aks-nodepool1-0"),
            ("use_auth", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = SecretValues::from_params(&params);
        let text = "SuperSecretValue123 /nonexistent?sig=SECRETSIG hunter22 aks-nodepool1-0 true SECRETSIG";
        assert_eq!(
            s.redact(text),
            "<redacted> <redacted> <redacted> aks-nodepool1-0 true <redacted>"
        );
        assert!(!format!("{s:?}").contains("hunter22"), "Debug shows no value: {s:?}");
        // A secret list parameter is used element by element.
        let list: BTreeMap<String, String> = [("api_keys".to_owned(), "FirstKey1111,SecondKey2222".to_owned())].into();
        let s = SecretValues::from_params(&list);
        assert_eq!(
            s.redact("got SecondKey2222, then FirstKey1111"),
            "got <redacted>, then <redacted>"
        );
    }

    #[test]
    fn a_record_is_redacted_everywhere_a_secret_value_can_be_copied() {
        let mut record: crate::audit::AuditRecord = serde_json::from_value(json!({
            "schema_version": 2, "run_id": "3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f",
            "tool": {"name": "t", "version": "0"}, "playbook": {"path": "p.rhai", "sha256": null},
            "params": {"token": "SuperSecretValue123", "log": "/nonexistent?sig=SECRETSIG", "node": "n1"},
            "started_at": "2026-11-21T05:59:05Z", "ended_at": "2026-11-21T05:59:05Z",
            "host": {"hostname": "h", "kernel_release": "k", "uid": 0, "euid": 0, "capabilities": []},
            "stages": [{"name": "tcptracer::read", "args": {"path": "/nonexistent?sig=SECRETSIG", "copy": "SuperSecretValue123"},
                        "started_at": "2026-11-21T05:59:05Z", "duration_ms": 1.0, "items": null, "outcome": "failed",
                        "error": "cannot open /nonexistent?sig=SECRETSIG: No such file or directory"}],
            "actions": [{"action": "event", "target": "pod/default/SuperSecretValue123", "request": {"body": {"message": "x SuperSecretValue123"}},
                         "state": "planned", "result": "SuperSecretValue123"}],
            "outcome": {"kind": "playbook_error", "message": "parameter `token`: \"SuperSecretValue123\" is not an integer\nnote=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"},
            "verdict": null, "exit_code": 2, "prev_sha256": null,
            "findings": [{"kind": "k", "severity": "info", "summary": format!("token SuperSecretValue123 seen, note={JWT}"), "evidence": {"list": ["SECRETSIG"]}}],
            "findings_truncated": 0,
        }))
        .unwrap();
        let raw = record.params.clone();
        record.params = redact_params(&raw);
        let secrets = SecretValues::from_params(&raw);
        redact_record(&mut record, &secrets);
        let text = serde_json::to_string(&record).unwrap();
        for secret in ["SuperSecretValue123", "SECRETSIG", "eyJ"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(record.params["node"], "n1");
        assert_eq!(
            record.outcome.message.as_deref(),
            Some("parameter `token`: \"<redacted>\" is not an integer\nnote=<redacted>")
        );
        // The whole value of `log` is secret (it holds a signature): gone whole, as from
        // `params`.
        assert_eq!(
            record.stages[0].error.as_deref(),
            Some("cannot open <redacted>: No such file or directory")
        );
        assert_eq!(record.findings[0]["summary"], "token <redacted> seen, note=<redacted>");
        assert_eq!(record.actions[0].target, "pod/default/<redacted>");
    }

    /// A secret value of several words is gone from a record's messages whole, also where
    /// a rule of [`redact_text`] would end it at its first space (`token=abc def ghi`).
    #[rstest]
    #[case::pair("check token=abc def ghi failed", "check token=<redacted> failed")]
    #[case::pair_wrapped("check token=abc def\nghi failed", "check token=<redacted> failed")]
    #[case::bearer("header Bearer abc def ghi sent", "header Bearer <redacted> sent")]
    #[case::yaml_line("token: abc def ghi\nnext", "token: <redacted>\nnext")]
    fn a_spaced_secret_value_is_gone_from_a_record(#[case] message: &str, #[case] want: &str) {
        let mut record: crate::audit::AuditRecord = serde_json::from_value(json!({
            "schema_version": 2, "run_id": "3f2b8c1e-5d4a-4c2b-9e1f-0a1b2c3d4e5f",
            "tool": {"name": "t", "version": "0"}, "playbook": {"path": "p.rhai", "sha256": null},
            "params": {"token": "abc def ghi", "note": message},
            "started_at": "2026-11-21T05:59:05Z", "ended_at": "2026-11-21T05:59:05Z",
            "host": {"hostname": "h", "kernel_release": "k", "uid": 0, "euid": 0, "capabilities": []},
            "stages": [{"name": "s", "args": {"m": message}, "started_at": "2026-11-21T05:59:05Z",
                        "duration_ms": 1.0, "items": null, "outcome": "failed", "error": message}],
            "actions": [], "outcome": {"kind": "playbook_error", "message": message},
            "verdict": null, "exit_code": 2, "prev_sha256": null,
            "findings": [{"kind": "k", "severity": "info", "summary": message}], "findings_truncated": 0,
        }))
        .unwrap();
        // The run's one secret (a `note` that looks secret itself would be one whole).
        let mut secrets = SecretValues::default();
        secrets.insert("abc def ghi");
        redact_record(&mut record, &secrets);
        assert_eq!(record.outcome.message.as_deref(), Some(want));
        assert_eq!(record.stages[0].error.as_deref(), Some(want));
        // JSON strings that look secret themselves (`token: …`) are replaced whole.
        for v in [&record.stages[0].args["m"], &record.findings[0]["summary"]] {
            assert!(v == want || v == REDACTED, "{v}");
        }
        assert!(
            [want, REDACTED].contains(&record.params["note"].as_str()),
            "{:?}",
            record.params
        );
        let text = serde_json::to_string(&record).unwrap();
        for word in ["abc", "def", "ghi"] {
            assert!(!text.contains(word), "{word} in {text}");
        }
    }

    /// Separators between the words of a value, as a text may show them.
    fn separator() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        proptest::sample::select(vec![" ", "  ", "\n", "\t", "\n    ", " \r\n", "\\n", "\\t", " \\n "])
            .prop_map(str::to_owned)
    }

    proptest::proptest! {
        /// A secret value of one or more words, in any text made of what the rules of
        /// [`redact_text`] react to, whatever separates its words there, as it is or quoted
        /// by `{:?}` or JSON, never survives in part: not on stdout or stderr (the values
        /// alone) nor in a record (the values, then [`redact_text`]).
        #[test]
        fn no_part_of_a_secret_value_survives_whatever_surrounds_it(
            before in proptest::collection::vec(proptest::sample::select(vec![
                "token=", "sig=", "key: ", "password: ", "bearer ", "basic ", "\"", "'", "\\", ":",
                " ", "\n", "&", "x", "run", "-", "=", "<redacted>", "eyj"]), 0..6),
            after in "[a-z \n\\\"'=:,.&-]{0,20}",
            words in proptest::collection::vec("[QXZ0-9%+/_.]{1,8}", 1..4),
            seps in proptest::collection::vec(separator(), 3),
            quoting in 0usize..3,
        ) {
            let value = words.join(" ");
            let mut s = SecretValues::default();
            proptest::prop_assume!(s.insert(&value));
            let mut shown = words[0].clone();
            for (w, sep) in words[1..].iter().zip(&seps) {
                shown.push_str(sep);
                shown.push_str(w);
            }
            let shown = match quoting {
                0 => shown,
                1 => format!("{shown:?}"),
                _ => serde_json::to_string(&shown).unwrap(),
            };
            let text = format!("{}{shown}{after}", before.concat());
            let secret_char = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || "%+/_".contains(c);
            for out in [s.redact(&text), redact_text(&s.redact(&text))] {
                proptest::prop_assert!(!out.contains(secret_char), "{text:?} gave {out:?}");
            }
        }

        /// A secret value, in any text, as it is or quoted by `{:?}`, never survives the
        /// writer's redaction of a message.
        #[test]
        fn a_secret_value_never_survives_in_any_text(
            before in "\\PC{0,40}",
            after in "\\PC{0,40}",
            value in "\\PC{4,24}",
            debug in proptest::bool::ANY,
        ) {
            let mut s = SecretValues::default();
            proptest::prop_assume!(s.insert(&value));
            let shown = if debug { format!("{value:?}") } else { value.clone() };
            let out = s.redact(&redact_text(&format!("{before}{shown}{after}")));
            proptest::prop_assert!(!out.contains(&value), "{out:?}");
            proptest::prop_assert!(!out.contains(value.trim()), "{out:?}");
        }

        /// Two values that overlap or touch in the text are both gone.
        #[test]
        fn overlapping_secret_values_never_survive(
            text in "[a-d<>]{0,30}",
            a in "[a-d<>]{4,8}",
            b in "[a-d<>]{4,8}",
        ) {
            let mut s = SecretValues::default();
            s.insert(&a);
            s.insert(&b);
            let out = s.redact(&text);
            for v in [&a, &b] {
                if !REDACTED.contains(v.as_str()) {
                    proptest::prop_assert!(!out.contains(v.as_str()), "{v} in {out:?}");
                }
            }
        }

        #[test]
        fn text_redaction_is_idempotent(text in "\\PC{0,60}", tricky in proptest::collection::vec(
            proptest::sample::select(vec!["token=", "sig=", "?", "&", "\"", "'", "\\", ":", " ", "\n", "eyJ", ".",
                                          "Bearer", "-----BEGIN X-----", "-----END X-----", "- ", "key: ", "<redacted>"]),
            0..12)) {
            let text = format!("{text}{}", tricky.concat());
            let once = redact_text(&text);
            proptest::prop_assert_eq!(redact_text(&once), once.clone());
            let word = redact_cmdline(&text);
            proptest::prop_assert_eq!(redact_cmdline(&word), word);
        }

        #[test]
        fn plain_text_is_kept_byte_for_byte(text in plain_text()) {
            proptest::prop_assert_eq!(redact_text(&text), text);
        }

        /// A secret written in any of the forms redact_text knows, between any plain words,
        /// never survives, and the plain words around it do.
        #[test]
        fn an_embedded_secret_never_survives(
            before in plain_text(),
            after in plain_text(),
            secret in "[A-Za-z0-9%+/_]{12,30}",
            form in 0usize..6,
            name in proptest::sample::select(vec!["token", "sig", "DB_PASSWORD", "--api-key", "x-auth"]),
        ) {
            let secret = format!("Q{secret}");
            let (shown, want) = match form {
                0 => (format!("{name}={secret}"), format!("{name}={REDACTED}")),
                1 => (format!("https://h/p?sv=1&{name}={secret}&se=2"), format!("https://h/p?sv=1&{name}={REDACTED}&se=2")),
                2 => (format!("\"{name}={secret}\":"), format!("\"{name}={REDACTED}\":")),
                3 => (format!("Bearer {secret}"), format!("Bearer {REDACTED}")),
                4 => (format!("-----BEGIN KEY-----\n{secret}\n-----END KEY-----"), REDACTED.to_owned()),
                _ => (format!("{name}=eyJ{secret}.eyJ{secret}.{secret}"), format!("{name}={REDACTED}")),
            };
            let text = format!("{before} {shown}\n{after}");
            let out = redact_text(&text);
            proptest::prop_assert!(!out.contains(&secret), "{out:?}");
            proptest::prop_assert_eq!(out, format!("{before} {want}\n{after}"));
        }

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
                    proptest::prop_assert_eq!(v, &redact_text(&params[k]));
                }
            }
        }
    }
}
