//! The WIDER FACE protocol: the shared case with its official AP, and hand-made cases.

mod common;

use std::collections::HashMap;

use candletron::evaluation::matfile::{read_mat_file, MatValue};
use candletron::evaluation::predictions::read_predictions;
use candletron::evaluation::widerface::{evaluate, GroundTruth, GtImage};

#[test]
fn mat_reader_reads_the_official_ground_truth() {
    let Some(shared) = common::shared("mat_reader_reads_the_official_ground_truth") else {
        return;
    };
    let dir = shared.join("widerface/ground_truth");
    let vars = read_mat_file(&dir.join("wider_face_val.mat")).unwrap();
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "event_list",
        "file_list",
        "face_bbx_list",
        "blur_label_list",
        "occlusion_label_list",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let events = &vars.iter().find(|(n, _)| n == "event_list").unwrap().1;
    assert_eq!(events.dims(), [61, 1]);
    assert_eq!(
        events.as_cell().unwrap()[0],
        MatValue::Char {
            dims: vec![1, 9],
            text: "0--Parade".into()
        }
    );
    let gt = GroundTruth::from_mat_dir(&dir).unwrap();
    assert_eq!(gt.images.len(), 3226);
    // 39,704 faces plus one all-zero placeholder row in each of the 4 images without faces.
    assert_eq!(
        gt.images.iter().map(|i| i.boxes.len()).sum::<usize>(),
        39_708
    );
    let zero_rows = gt
        .images
        .iter()
        .flat_map(|i| &i.boxes)
        .filter(|b| b.iter().all(|&v| v == 0.0))
        .count();
    assert_eq!(zero_rows, 4);
    assert_eq!(
        [gt.num_faces(0), gt.num_faces(1), gt.num_faces(2)],
        [7211, 13_319, 31_958]
    );
    let quirk = gt
        .images
        .iter()
        .find(|i| i.name == "39_Ice_Skating_iceskiing_39_583")
        .unwrap();
    assert!(quirk.boxes.iter().any(|b| b[2] == -2.0));
}

#[test]
fn eval_case_a_matches_the_official_ap() {
    let Some(shared) = common::shared("eval_case_a_matches_the_official_ap") else {
        return;
    };
    let gt = GroundTruth::from_mat_dir(&shared.join("widerface/ground_truth")).unwrap();
    let (preds, missing) =
        read_predictions(&shared.join("widerface/eval_case_a/predictions"), &gt).unwrap();
    assert!(missing.is_empty(), "{missing:?}");
    let result = evaluate(&gt, &preds);
    let expected: HashMap<String, f64> = serde_json::from_str(
        &std::fs::read_to_string(shared.join("widerface/eval_case_a/expected_ap.json")).unwrap(),
    )
    .unwrap();
    for (i, name) in ["easy", "medium", "hard"].iter().enumerate() {
        let got = result.curves[i].ap;
        eprintln!("{name}: {got} (expected {})", expected[*name]);
        assert!(
            (got - expected[*name]).abs() <= 1e-9,
            "{name}: {got} vs {}",
            expected[*name]
        );
    }
    assert!(result.warnings.is_empty());
}

fn img(name: &str, boxes: &[[f64; 4]], keep: &[usize]) -> GtImage {
    GtImage {
        event: "ev".into(),
        name: name.into(),
        boxes: boxes.to_vec(),
        keep: [keep.to_vec(), keep.to_vec(), keep.to_vec()],
    }
}

fn preds(entries: &[(&str, &[[f64; 5]])]) -> HashMap<(String, String), Vec<[f64; 5]>> {
    entries
        .iter()
        .map(|(n, d)| (("ev".to_string(), n.to_string()), d.to_vec()))
        .collect()
}

#[test]
fn hand_case_gives_exactly_one_third() {
    // shared/widerface/README.md's case. Scores normalise to (s - .4) / .55; image A's
    // [50,50,4,4] detection matches a face outside the keep list and is ignored, its
    // duplicate [0,0,10,10] at .5 is a false positive; B and C give false positives.
    let gt = candletron::evaluation::GroundTruth {
        images: vec![
            img(
                "A",
                &[[0., 0., 10., 10.], [20., 20., 10., 10.], [50., 50., 4., 4.]],
                &[0, 1],
            ),
            img("B", &[[10., 10., 20., 20.]], &[0]),
            img("C", &[[0., 0., 8., 8.]], &[]),
        ],
    };
    let p = preds(&[
        (
            "A",
            &[
                [0., 0., 10., 10., 0.9],
                [50., 50., 4., 4., 0.8],
                [100., 100., 10., 10., 0.7],
                [21., 21., 10., 10., 0.6],
                [0., 0., 10., 10., 0.5],
            ],
        ),
        ("B", &[[200., 200., 5., 5., 0.95]]),
        ("C", &[[30., 30., 5., 5., 0.4]]),
    ]);
    let r = evaluate(&gt, &p);
    for c in &r.curves {
        assert!((c.ap - 1.0 / 3.0).abs() < 1e-15, "AP {}", c.ap);
    }
}

#[test]
fn hand_cases_duplicates_ignored_and_missing_images() {
    // One kept face detected twice: the lower-scored duplicate is a false positive, but at
    // the first detection's threshold P = 1 and R = 1, so AP = 1.
    let gt = candletron::evaluation::GroundTruth {
        images: vec![img("A", &[[0., 0., 10., 10.]], &[0])],
    };
    let p = preds(&[("A", &[[0., 0., 10., 10., 0.9], [1., 0., 10., 10., 0.1]])]);
    assert!((evaluate(&gt, &p).curves[0].ap - 1.0).abs() < 1e-12);
    // A false positive scored above the true one: precision at full recall is 1/2 -> AP 1/2.
    let p = preds(&[("A", &[[100., 100., 10., 10., 0.9], [0., 0., 10., 10., 0.1]])]);
    assert!((evaluate(&gt, &p).curves[0].ap - 0.5).abs() < 1e-12);

    // A detection on a face outside the keep list is ignored, not a false positive.
    let gt = candletron::evaluation::GroundTruth {
        images: vec![img("A", &[[0., 0., 10., 10.], [40., 40., 10., 10.]], &[0])],
    };
    let p = preds(&[("A", &[[40., 40., 10., 10., 0.9], [0., 0., 10., 10., 0.5]])]);
    assert!((evaluate(&gt, &p).curves[0].ap - 1.0).abs() < 1e-12);

    // Kept faces of images without detections count: half the faces are never found.
    let gt = candletron::evaluation::GroundTruth {
        images: vec![
            img("A", &[[0., 0., 10., 10.]], &[0]),
            img("B", &[[0., 0., 10., 10.]], &[0]),
        ],
    };
    let p = preds(&[("A", &[[0., 0., 10., 10., 0.9], [50., 50., 5., 5., 0.2]])]);
    assert!((evaluate(&gt, &p).curves[0].ap - 0.5).abs() < 1e-12);

    // Equal scores: no NaN, and a warning that says why.
    let p = preds(&[("A", &[[0., 0., 10., 10., 0.7], [50., 50., 5., 5., 0.7]])]);
    let r = evaluate(&gt, &p);
    assert!(r.curves.iter().all(|c| c.ap.is_finite()));
    assert!(
        r.warnings.iter().any(|w| w.contains("same score")),
        "{:?}",
        r.warnings
    );
    assert!((r.curves[0].ap - 0.25).abs() < 1e-12, "{}", r.curves[0].ap);
}
