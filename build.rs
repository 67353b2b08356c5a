//! Generates the C header `postcopy_ram.h` with cbindgen, into `$OUT_DIR` only: a build
//! never modifies tracked files. `tests/header.rs` compares it with the committed
//! `include/postcopy_ram.h`, and `scripts/bless-header.sh` copies it there.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let header = out_dir.join("postcopy_ram.h");
    if std::env::var_os("CARGO_FEATURE_CAPI").is_some() {
        let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
            .expect("cbindgen.toml parses");
        match cbindgen::Builder::new()
            .with_crate(&crate_dir)
            .with_config(config)
            .generate()
        {
            Ok(bindings) => {
                bindings.write_to_file(&header);
            }
            // A half-edited source tree should still report rustc's errors, not ours.
            Err(e) => println!("cargo:warning=cbindgen could not generate the header: {e}"),
        }
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
