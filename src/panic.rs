//! Panic payloads as text, for the threads and exports that catch panics.

use std::any::Any;

/// The text of a panic payload, when it is a string.
pub fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(non-string panic payload)"
    }
}

#[cfg(test)]
mod tests {
    use super::panic_text;

    #[test]
    fn string_payloads_are_text_others_are_named() {
        let p = std::panic::catch_unwind(|| panic!("static text")).unwrap_err();
        assert_eq!(panic_text(p.as_ref()), "static text");
        let n = 7;
        let p = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_text(p.as_ref()), "formatted 7");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(42u8)).unwrap_err();
        assert_eq!(panic_text(p.as_ref()), "(non-string panic payload)");
    }
}
