#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| candletron::fuzzing::serve_query(data));
