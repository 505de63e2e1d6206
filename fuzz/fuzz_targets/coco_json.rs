#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| candletron::fuzzing::coco_json(data));
