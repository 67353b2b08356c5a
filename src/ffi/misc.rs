//! C exports: logging and version.

use std::ffi::{c_char, c_int, c_void};

use super::ret::ffi_call;
use super::types::PcrLogCallback;
use crate::error::Result;
use crate::logging;

/// Routes the library's log lines to `callback(opaque, level, message)` (level 1 = error,
/// 2 = warn, 3 = info, 4 = debug, 5 = trace; `message` valid during the call only), keeping
/// those at or below `max_level` (0 = off). `callback` may be called from any thread,
/// including the fault thread, and must not call back into the library. NULL restores the
/// default: stderr through env_logger, configured by the POSTCOPY_LOG environment variable.
#[no_mangle]
pub extern "C" fn pcr_set_log_callback(
    callback: PcrLogCallback,
    opaque: *mut c_void,
    max_level: c_int,
) {
    ffi_call!(|| -> Result<()> {
        let level = match max_level {
            i32::MIN..=0 => log::LevelFilter::Off,
            1 => log::LevelFilter::Error,
            2 => log::LevelFilter::Warn,
            3 => log::LevelFilter::Info,
            4 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        logging::set_c_callback(callback, opaque, level);
        Ok(())
    })
}

/// The library version as a static string, e.g. "0.1.0".
#[no_mangle]
pub extern "C" fn pcr_version() -> *const c_char {
    ffi_call!(|| -> Result<*const c_char> {
        Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
    })
}

/// The library version as (major << 16) | (minor << 8) | patch.
#[no_mangle]
pub extern "C" fn pcr_version_number() -> u32 {
    ffi_call!(|| -> Result<u32> {
        let part = |s: &str| s.parse::<u32>().unwrap_or(0);
        Ok((part(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
            | (part(env!("CARGO_PKG_VERSION_MINOR")) << 8)
            | part(env!("CARGO_PKG_VERSION_PATCH")))
    })
}
