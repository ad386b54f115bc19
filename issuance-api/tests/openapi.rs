//! Keeps `openapi.json` in step with the router: the routes declared in `src/routes.rs`, the
//! security of each, the documented responses, the `$ref`s, and the error kinds and codes.

use std::collections::BTreeSet;

use serde_json::Value;

const DOC: &str = include_str!("../openapi.json");
const ROUTES: &str = include_str!("../src/routes/mod.rs");
/// Every source of the API crate that can answer a problem document.
const API_SOURCES: &[&str] = &[
    include_str!("../src/routes/mod.rs"),
    include_str!("../src/routes/batches.rs"),
    include_str!("../src/routes/certificates.rs"),
    include_str!("../src/routes/suppliers.rs"),
    include_str!("../src/routes/public.rs"),
    include_str!("../src/routes/limits.rs"),
    include_str!("../src/auth.rs"),
    include_str!("../src/state.rs"),
    include_str!("../src/error.rs"),
];
/// The use cases the API calls (and what they call): their refusals become problem kinds. The
/// CLI's use cases live in the same files; only these functions are read.
const SERVICE_FNS: &[&str] = &[
    "authorize",
    "authenticate",
    "api_batch",
    "batch_answer",
    "expand",
    "certificate",
    "device_certificates",
    "supplier_certificates",
    "views",
    "revoke_one",
    "check_reason",
    "enrol_key",
    "enrol_item",
    "from",
    "class",
    "code",
];
const SERVICE_SOURCES: &[&str] = &[
    include_str!("../../ca-core/src/service/authz.rs"),
    include_str!("../../ca-core/src/service/accounts.rs"),
    include_str!("../../ca-core/src/service/issuance.rs"),
    include_str!("../../ca-core/src/service/views.rs"),
    include_str!("../../ca-core/src/service/revoke.rs"),
    include_str!("../../ca-core/src/service/suppliers.rs"),
    include_str!("../../ca-core/src/service/error.rs"),
];
const ISSUE_ERROR: &str = include_str!("../../ca-core/src/issue/error.rs");

/// The HTTP methods an OpenAPI path item can hold (and axum's method routers of the same name).
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::from_str(DOC).expect("openapi.json is not valid JSON")
}

/// A Rust source token, as much as this test needs: comments and whitespace are dropped,
/// string literals kept with their (unescaped enough) contents.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == 'r' && matches!(c.get(i + 1), Some('"') | Some('#')) && {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            c.get(j) == Some(&'"')
        } {
            let mut j = i + 1;
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            let start = j;
            loop {
                assert!(j < c.len(), "unterminated raw string in Rust source");
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    break;
                }
                j += 1;
            }
            out.push(Tok::Str(c[start..j].iter().collect()));
            i = j + 1 + hashes;
        } else if ch == '"' {
            let mut s = String::new();
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                    match c.get(i) {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(&o) => s.push(o),
                        None => {}
                    }
                } else {
                    s.push(c[i]);
                }
                i += 1;
            }
            out.push(Tok::Str(s));
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '"') or a lifetime ('static).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

fn is_ident(t: Option<&Tok>, name: &str) -> bool {
    matches!(t, Some(Tok::Ident(s)) if s == name)
}

fn is_punct(t: Option<&Tok>, p: char) -> bool {
    t == Some(&Tok::Punct(p))
}

/// The index of the `)` that closes the `(` at `open`.
fn closing(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(') | Tok::Punct('[') | Tok::Punct('{') => depth += 1,
            Tok::Punct(')') | Tok::Punct(']') | Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in Rust source")
}

/// Every `(METHOD, PATH)` of the `.route("PATH", method(handler)...)` calls in `src`.
fn routes_in_source(src: &str) -> BTreeSet<(String, String)> {
    let toks = tokens(src);
    let mut out = BTreeSet::new();
    for i in 0..toks.len() {
        if !(is_punct(toks.get(i), '.')
            && is_ident(toks.get(i + 1), "route")
            && is_punct(toks.get(i + 2), '('))
        {
            continue;
        }
        let open = i + 2;
        let close = closing(&toks, open);
        let call = &toks[open + 1..close];
        let Some(Tok::Str(path)) = call.first() else {
            panic!("a .route( call whose first argument is not a string literal: {call:?}");
        };
        let mut methods = 0;
        for (j, t) in call.iter().enumerate() {
            if let Tok::Ident(name) = t {
                let method_call = METHODS.contains(&name.as_str())
                    && is_punct(call.get(j + 1), '(')
                    // `x.get(...)` is a method call on something, not a method router.
                    && !(j >= 2 && is_punct(call.get(j - 1), '.') && !is_punct(call.get(j - 2), ')'));
                if method_call {
                    out.insert((name.to_uppercase(), path.clone()));
                    methods += 1;
                }
            }
        }
        assert!(
            methods > 0,
            "route {path:?} in src/routes.rs: no get(/post(/... method router found"
        );
    }
    out
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let paths = doc["paths"]
        .as_object()
        .expect("openapi.json has no `paths` object");
    let mut out = Vec::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("path item {path} is not an object"));
        for (key, op) in item {
            if METHODS.contains(&key.as_str()) {
                out.push((key.to_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

fn list(set: &BTreeSet<(String, String)>) -> String {
    set.iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn the_route_parser_reads_split_and_chained_calls() {
    let src = r#"
        // .route("/commented", get(nothing))
        let r = Router::new()
            .route("/a/{x}", get(a))
            .route(
                "/b",
                post(b),
            )
            .route("/c", get(|| async { "ok\n" }).post(c))
            .route_layer(layer)
            .route("/d", axum::routing::delete(d));
    "#;
    let got = routes_in_source(src);
    let want: BTreeSet<(String, String)> = [
        ("GET", "/a/{x}"),
        ("POST", "/b"),
        ("GET", "/c"),
        ("POST", "/c"),
        ("DELETE", "/d"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn document_header() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "meterpki issuance API");
    assert!(
        doc["info"]["version"].is_string(),
        "info.version is required"
    );
    assert!(
        doc["servers"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["url"] == "https://127.0.0.1:8443")),
        "servers must list https://127.0.0.1:8443"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["mutualTLS"]["type"], "mutualTLS",
        "components.securitySchemes.mutualTLS must be of type mutualTLS"
    );
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let in_code = routes_in_source(ROUTES);
    assert!(
        in_code.len() >= 11,
        "only {} routes parsed from src/routes.rs: {}",
        in_code.len(),
        list(&in_code)
    );
    let doc = doc();
    let in_doc: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let missing: BTreeSet<_> = in_code.difference(&in_doc).cloned().collect();
    let extra: BTreeSet<_> = in_doc.difference(&in_code).cloned().collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "openapi.json and src/routes.rs disagree.\n  routes missing from openapi.json: [{}]\n  operations in openapi.json with no route: [{}]",
        list(&missing),
        list(&extra)
    );
}

#[test]
fn v1_needs_mutual_tls_and_the_public_routes_do_not() {
    let doc = doc();
    let top = doc.get("security");
    let mut wrong = Vec::new();
    for (method, path, op) in operations(&doc) {
        let security = op.get("security").or(top);
        let requirements = security
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mtls = requirements
            .iter()
            .any(|r| r.as_object().is_some_and(|o| o.contains_key("mutualTLS")));
        let open = requirements.is_empty()
            || requirements
                .iter()
                .any(|r| r.as_object().is_some_and(|o| o.is_empty()));
        if path.starts_with("/v1/") {
            if !mtls || open {
                wrong.push(format!(
                    "{method} {path}: must require mutualTLS (and not also allow anonymous access)"
                ));
            }
        } else if mtls || !requirements.is_empty() {
            wrong.push(format!("{method} {path}: public, must have no security"));
        }
    }
    assert!(wrong.is_empty(), "security:\n  {}", wrong.join("\n  "));
}

#[test]
fn every_operation_documents_success_and_v1_the_auth_failures() {
    let doc = doc();
    let mut wrong = Vec::new();
    for (method, path, op) in operations(&doc) {
        let Some(responses) = op["responses"].as_object() else {
            wrong.push(format!("{method} {path}: no responses"));
            continue;
        };
        if !responses.keys().any(|k| k.len() == 3 && k.starts_with('2')) {
            wrong.push(format!("{method} {path}: no 2xx response"));
        }
        if path.starts_with("/v1/") {
            for code in ["401", "403"] {
                if !responses.contains_key(code) {
                    wrong.push(format!("{method} {path}: no {code} response"));
                }
            }
        }
        for (code, response) in responses {
            if code.starts_with('4') || code.starts_with('5') {
                let problem = &response["content"]["application/problem+json"]["schema"]["$ref"];
                let plain_413 = code == "413" && response["content"].get("text/plain").is_some();
                if problem != "#/components/schemas/Problem" && !plain_413 {
                    wrong.push(format!(
                        "{method} {path}: {code} is not an application/problem+json Problem"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "responses:\n  {}", wrong.join("\n  "));
}

fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                if k == "$ref" {
                    out.push((at.clone(), v));
                } else {
                    refs(v, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_ref_resolves_to_a_schema() {
    let doc = doc();
    let schemas = doc["components"]["schemas"]
        .as_object()
        .expect("openapi.json has no components.schemas");
    let mut found = Vec::new();
    refs(&doc, "#".into(), &mut found);
    assert!(!found.is_empty(), "no $ref at all in openapi.json");
    let bad: Vec<String> = found
        .iter()
        .filter(|(_, r)| {
            !r.as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .is_some_and(|name| schemas.contains_key(name))
        })
        .map(|(at, r)| format!("{at}: {r}"))
        .collect();
    assert!(
        bad.is_empty(),
        "$refs that name no components/schemas entry:\n  {}",
        bad.join("\n  ")
    );
}

/// The literal kinds of `ApiError::new(status, "kind", ..)` and `bad_request("kind", ..)`.
fn problem_kinds(src: &str) -> BTreeSet<String> {
    let toks = tokens(src);
    let mut out = BTreeSet::new();
    for i in 0..toks.len() {
        // The service's refusals: `ServiceError::denied("kind", ...)` and its siblings, and
        // `refused(ErrorClass::X, "kind", ...)`.
        if is_ident(toks.get(i), "ServiceError")
            && is_punct(toks.get(i + 1), ':')
            && is_punct(toks.get(i + 2), ':')
            && is_punct(toks.get(i + 4), '(')
        {
            let at = match toks.get(i + 3) {
                Some(Tok::Ident(f)) if ["denied", "invalid", "conflict"].contains(&f.as_str()) => {
                    Some(i + 5)
                }
                Some(Tok::Ident(f)) if f == "refused" => (i + 5..closing(&toks, i + 4))
                    .find(|&j| is_punct(toks.get(j), ','))
                    .map(|j| j + 1),
                _ => None,
            };
            if let Some(Tok::Str(kind)) = at.and_then(|j| toks.get(j)) {
                out.insert(kind.clone());
            }
        }
        if is_ident(toks.get(i), "bad_request") && is_punct(toks.get(i + 1), '(') {
            if let Some(Tok::Str(kind)) = toks.get(i + 2) {
                out.insert(kind.clone());
            }
        }
        if is_ident(toks.get(i), "ApiError")
            && is_punct(toks.get(i + 1), ':')
            && is_punct(toks.get(i + 2), ':')
            && is_ident(toks.get(i + 3), "new")
            && is_punct(toks.get(i + 4), '(')
        {
            let close = closing(&toks, i + 4);
            let mut depth = 0usize;
            for j in i + 5..close {
                match &toks[j] {
                    Tok::Punct('(') | Tok::Punct('[') | Tok::Punct('{') => depth += 1,
                    Tok::Punct(')') | Tok::Punct(']') | Tok::Punct('}') => depth -= 1,
                    Tok::Punct(',') if depth == 0 => {
                        if let Some(Tok::Str(kind)) = toks.get(j + 1) {
                            out.insert(kind.clone());
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// The text of every `fn NAME` in `src` (signature and body) whose NAME is in `names`.
fn fn_bodies(src: &str, names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("fn ") {
        let after = &rest[at + 3..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = after.find('{') else { break };
        // The body: from the first `{` to its match (strings in these sources hold no braces
        // that matter: a stray one only widens the text read).
        let mut depth = 0usize;
        let mut end = open;
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        if names.contains(&name.as_str()) {
            out.push(after[..end].to_string());
        }
        rest = &after[end.max(1)..];
    }
    out
}

/// The strings of `ErrorCode::as_str`.
fn error_codes(src: &str) -> BTreeSet<String> {
    let toks = tokens(src);
    (0..toks.len().saturating_sub(2))
        .filter(|&i| is_punct(toks.get(i), '=') && is_punct(toks.get(i + 1), '>'))
        .filter_map(|i| match toks.get(i + 2) {
            Some(Tok::Str(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_error_kind_and_code_is_described() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    let problem_types = schemas["Problem"]["properties"]["type"]["description"]
        .as_str()
        .expect("Problem.type has no description");
    let batch_codes = schemas["BatchError"]["properties"]["code"]["description"]
        .as_str()
        .expect("BatchError.code has no description");

    let mut kinds = BTreeSet::new();
    for src in API_SOURCES {
        kinds.extend(problem_kinds(src));
    }
    for src in SERVICE_SOURCES {
        for body in fn_bodies(src, SERVICE_FNS) {
            kinds.extend(problem_kinds(&body));
        }
    }
    assert!(
        kinds.contains("too-many-requests") && kinds.contains("forbidden"),
        "problem kinds not parsed from the sources: {kinds:?}"
    );
    let codes = error_codes(ISSUE_ERROR);
    assert!(
        codes.contains("csr-signature"),
        "error codes not parsed from ca-core: {codes:?}"
    );

    let undocumented: Vec<&String> = kinds
        .iter()
        .chain(&codes)
        .filter(|k| !problem_types.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "problem kinds missing from Problem.type's description: {undocumented:?}"
    );
    let undocumented: Vec<&String> = codes
        .iter()
        .filter(|k| !batch_codes.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "error codes missing from BatchError.code's description: {undocumented:?}"
    );
}
