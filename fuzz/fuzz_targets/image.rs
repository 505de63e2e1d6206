#![no_main]
//! `decode_image_bytes` turns a panic inside a decoder (another crate's code) into that
//! image's error. libFuzzer's panic hook would abort on it all the same, so the hook here
//! only reports, and the target aborts when a panic leaves the entry point: a crash is
//! what would crash a user's run.
use std::sync::Once;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static REPORT_ONLY: Once = Once::new();
    REPORT_ONLY.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    if std::panic::catch_unwind(|| candletron::fuzzing::image(data)).is_err() {
        std::process::abort();
    }
});
