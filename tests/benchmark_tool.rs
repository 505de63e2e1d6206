//! `benchmark` runs inference and a training step for both detector meta-architectures
//! and ends with its JSON line.

use std::process::Command;

#[test]
fn inference_and_train_for_both_detectors_print_json() {
    for config in [
        "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        "configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml",
    ] {
        for (task, batch) in [("inference", "1"), ("train", "2")] {
            let o = Command::new(env!("CARGO_BIN_EXE_benchmark"))
                .args([
                    "--config",
                    config,
                    "--task",
                    task,
                    "--batch",
                    batch,
                    "--size",
                    "96",
                    "--iters",
                    "1",
                    "--warmup",
                    "0",
                    "--json",
                    "--",
                    "MODEL.WEIGHTS",
                    "",
                    "MODEL.MOBILENET.WIDTH_MULT",
                    "0.35",
                    "MODEL.FPN.OUT_CHANNELS",
                    "16",
                ])
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "{config} {task}: {out}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let last = out.lines().last().unwrap();
            let v: serde_json::Value = serde_json::from_str(last).unwrap();
            assert_eq!(v["task"], task, "{last}");
            assert!(v["median_ms"].as_f64().unwrap() > 0.0, "{last}");
        }
    }
}
