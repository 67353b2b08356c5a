//! Logging: every diagnostic of the library goes through the `log` crate.
//!
//! A Rust host installs whatever logger it likes and this module stays out of the way.
//! Through the C ABI the library installs its own dispatcher on first use: it forwards each
//! record to the callback a C host registered with `pcr_set_log_callback`, or, without
//! one, to `env_logger` configured by the `POSTCOPY_LOG` environment variable
//! (`POSTCOPY_LOG=debug`, `POSTCOPY_LOG=postcopy_ram=trace`, ...; default `warn`).

use std::ffi::{c_char, c_void, CString};
use std::sync::Once;

use parking_lot::RwLock;

/// Name of the environment variable that configures the fallback `env_logger`.
pub const LOG_ENV: &str = "POSTCOPY_LOG";

/// A C log sink: `level` is 1 (error) to 5 (trace), `message` a NUL-terminated line without
/// a trailing newline, valid only during the call.
pub type LogCallback =
    unsafe extern "C" fn(opaque: *mut c_void, level: i32, message: *const c_char);

#[derive(Clone, Copy)]
struct CSink {
    callback: LogCallback,
    opaque: *mut c_void,
}

// SAFETY: the library never dereferences `opaque`: it only hands it back to `callback`, and
// pcr_set_log_callback's contract (the header) requires the callback to accept calls from
// any thread with that pointer. The fn pointer itself is plain data.
unsafe impl Send for CSink {}
// SAFETY: as above; shared access only copies the two pointers out.
unsafe impl Sync for CSink {}

static C_SINK: RwLock<Option<CSink>> = RwLock::new(None);
static INSTALL: Once = Once::new();

struct Dispatcher {
    fallback: env_logger::Logger,
}

impl log::Log for Dispatcher {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        if C_SINK.read().is_some() {
            metadata.level() <= log::max_level()
        } else {
            self.fallback.enabled(metadata)
        }
    }

    fn log(&self, record: &log::Record) {
        let sink = *C_SINK.read();
        match sink {
            Some(sink) => {
                if record.level() > log::max_level() {
                    return;
                }
                let text = format!("{}", record.args());
                let line = CString::new(text.replace('\0', "\\0")).unwrap_or_default();
                // SAFETY: `callback` is a function of the PcrLogCallback signature registered
                // together with `opaque` (see the Send impl); `line` is a NUL-terminated string
                // that lives until the call returns, which is all the callback may rely on.
                unsafe { (sink.callback)(sink.opaque, record.level() as i32, line.as_ptr()) };
            }
            None => self.fallback.log(record),
        }
    }

    fn flush(&self) {
        self.fallback.flush();
    }
}

/// Installs the library's dispatcher as the global logger, once. If the host process already
/// installed a logger, that one is kept and this does nothing.
pub fn ensure_installed() {
    INSTALL.call_once(|| {
        let fallback = env_logger::Builder::new()
            .filter_level(log::LevelFilter::Warn)
            .parse_env(env_logger::Env::new().filter(LOG_ENV))
            .build();
        let level = fallback.filter();
        if log::set_boxed_logger(Box::new(Dispatcher { fallback })).is_ok() {
            log::set_max_level(level);
        }
    });
}

/// Routes log records to `callback` (or back to `env_logger` when `None`), with records more
/// verbose than `max_level` dropped.
pub fn set_c_callback(
    callback: Option<LogCallback>,
    opaque: *mut c_void,
    max_level: log::LevelFilter,
) {
    ensure_installed();
    *C_SINK.write() = callback.map(|callback| CSink { callback, opaque });
    log::set_max_level(max_level);
}
