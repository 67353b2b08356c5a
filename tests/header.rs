//! The committed C header is what build.rs generates from the sources today.
//!
//! Meaningful when built with `POSTCOPY_RAM_CHECK_HEADER=1` (the README's test command sets
//! it): build.rs then leaves `include/` alone and this compares the committed header with a
//! fresh one in OUT_DIR. In a normal build, build.rs refreshes `include/` itself.

#[test]
fn committed_header_is_current() {
    let fresh = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/postcopy_ram.h"))
        .expect("build.rs wrote the header");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/postcopy_ram.h"
    ))
    .expect("include/postcopy_ram.h exists");
    assert!(
        fresh == committed,
        "include/postcopy_ram.h is stale: run `cargo build` and commit include/postcopy_ram.h"
    );
}

#[test]
fn header_declares_every_seed_function() {
    let header = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/postcopy_ram.h"
    ))
    .unwrap();
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
        assert!(header.contains(name), "header lacks {name}");
    }
}
