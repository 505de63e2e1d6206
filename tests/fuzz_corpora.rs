//! Replays the fuzz corpora (`fuzz/corpus/TARGET/`, made by `cargo fuzz run TARGET` over
//! the parsers of outside input) through the same entry points as the fuzz targets: every
//! input must be handled without a panic or an abort.

use std::path::Path;

/// A fuzz target: its name and entry point.
type Target = (&'static str, fn(&[u8]));

#[test]
fn every_fuzz_corpus_input_is_handled() {
    let targets: [Target; 8] = [
        ("wider_bbx_gt", candletron::fuzzing::wider_bbx_gt),
        ("prediction_file", candletron::fuzzing::prediction_file),
        ("mat_file", candletron::fuzzing::mat_file),
        ("checkpoint", candletron::fuzzing::checkpoint),
        ("config", candletron::fuzzing::config),
        ("coco_json", candletron::fuzzing::coco_json),
        ("image", candletron::fuzzing::image),
        ("serve_query", candletron::fuzzing::serve_query),
    ];
    let root = Path::new("fuzz/corpus");
    for (name, run) in targets {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(
            inputs.len() >= 3,
            "{name}: only {} corpus inputs",
            inputs.len()
        );
        for p in &inputs {
            let data = std::fs::read(p).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{name}: {} panicked", p.display());
        }
    }
}
