//! Generates the C header `include/postcopy_ram.h` with cbindgen.
//!
//! The header is always written to `$OUT_DIR/postcopy_ram.h`. It is also written to
//! `include/` (when its content changed) unless `POSTCOPY_RAM_CHECK_HEADER=1`: the test
//! command sets that, so that `tests/header.rs` compares the committed header with a fresh
//! one and fails when the committed one is stale.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=POSTCOPY_RAM_CHECK_HEADER");
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(b) => b,
        Err(e) => {
            // A half-edited source tree should still report rustc's errors, not ours.
            println!("cargo:warning=cbindgen could not generate the header: {e}");
            return;
        }
    };
    bindings.write_to_file(out_dir.join("postcopy_ram.h"));
    if std::env::var("POSTCOPY_RAM_CHECK_HEADER").as_deref() != Ok("1") {
        bindings.write_to_file(crate_dir.join("include").join("postcopy_ram.h"));
    }
    // SONAME for the shared library, so that C hosts link against the ABI version.
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_else(|_| "0".into());
    let abi = if major == "0" {
        format!("0.{minor}")
    } else {
        major
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpostcopy_ram.so.{abi}");
}
