//! The committed C headers: `include/postcopy_ram.h` is exactly what build.rs generates
//! today (`scripts/bless-header.sh` rewrites it), declares only `pcr_` names and holds no
//! rustdoc syntax; `include/postcopy_ram_seed.h` declares every seed function.
#![cfg(feature = "capi")]

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/postcopy_ram.h");
const FRESH: &str = concat!(env!("OUT_DIR"), "/postcopy_ram.h");
const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/postcopy_ram_seed.h");

#[test]
fn committed_header_is_current() {
    let fresh = std::fs::read_to_string(FRESH).expect("build.rs wrote the header");
    if std::env::var_os("PCR_BLESS_HEADER").is_some() {
        std::fs::write(COMMITTED, &fresh).expect("writing include/postcopy_ram.h");
        return;
    }
    let committed = std::fs::read_to_string(COMMITTED).expect("include/postcopy_ram.h exists");
    assert!(
        fresh == committed,
        "include/postcopy_ram.h is stale: run scripts/bless-header.sh and commit it"
    );
}

/// The identifiers a C header declares: function names, typedef names, struct names,
/// macros and enumerators (lines of the form `NAME = value,` inside an enum).
fn declared_identifiers(header: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_comment = false;
    for line in header.lines() {
        let t = line.trim();
        if in_comment {
            in_comment = !t.contains("*/");
            continue;
        }
        if t.starts_with("/*") {
            in_comment = !t.contains("*/");
            continue;
        }
        let ident = |s: &str| -> String {
            s.chars()
                .skip_while(|c| *c == '*')
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        if let Some(rest) = t.strip_prefix("#define ") {
            names.push(ident(rest));
        } else if let Some(rest) = t.strip_prefix("typedef struct ") {
            names.push(ident(rest));
        } else if t.starts_with("typedef ") && t.ends_with(';') {
            // typedef <type> NAME;  or  typedef ret (*NAME)(...);
            let name = match t.find("(*") {
                Some(i) => ident(&t[i + 2..]),
                None => ident(t.trim_end_matches(';').rsplit(' ').next().unwrap_or("")),
            };
            names.push(name);
        } else if let Some(open) = t.find('(') {
            // Function declarations; not struct fields holding function pointers.
            if !t.starts_with("typedef")
                && !t.starts_with('#')
                && !t.starts_with("extern")
                && !t.contains("(*")
            {
                let before = t[..open].trim_end();
                names.push(ident(before.rsplit([' ', '*']).next().unwrap_or("")));
            }
        } else if t.contains(" = ") && t.ends_with(',') {
            names.push(ident(t));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[test]
fn header_declares_only_prefixed_names() {
    let header = std::fs::read_to_string(COMMITTED).unwrap();
    let names = declared_identifiers(&header);
    assert!(names.len() > 60, "parsed only {names:?}");
    assert!(names.iter().any(|n| n == "pcr_place_page"));
    assert!(names.iter().any(|n| n == "PCR_STATE_LISTENING"));
    for n in &names {
        assert!(
            n.starts_with("pcr_")
                || n.starts_with("Pcr")
                || n.starts_with("PCR_")
                || n == "POSTCOPY_RAM_H",
            "postcopy_ram.h declares {n}, which lacks the pcr_ prefix"
        );
    }
}

#[test]
fn header_has_no_rustdoc_syntax() {
    let header = std::fs::read_to_string(COMMITTED).unwrap();
    for (i, line) in header.lines().enumerate() {
        assert!(
            !line.contains("[`") && !line.contains("](") && !line.contains("crate::"),
            "postcopy_ram.h line {} holds rustdoc syntax: {line}",
            i + 1
        );
    }
}

#[test]
fn seed_header_declares_every_seed_function() {
    let header = std::fs::read_to_string(SEED).unwrap();
    for name in [
        "bool postcopy_ram_supported_by_host(void);",
        "int postcopy_ram_incoming_init(",
        "int postcopy_ram_incoming_cleanup(",
        "int postcopy_ram_prepare_discard(",
        "int postcopy_ram_enable_notify(",
        "int postcopy_place_page(",
        "int postcopy_place_page_zero(",
        "void *postcopy_get_tmp_page(",
        "PostcopyDiscardState *postcopy_discard_send_init(",
        "void postcopy_discard_send_range(",
        "void postcopy_discard_send_finish(",
        "PostcopyState postcopy_state_get(void);",
        "PostcopyState postcopy_state_set(PostcopyState new_state);",
    ] {
        assert!(header.contains(name), "postcopy_ram_seed.h lacks {name}");
    }
}
