//! COCO-style AP on hand-made cases whose values are derived in the comments.

use candletron::evaluation::coco::{evaluate_coco, CocoDet, CocoGt};

fn gt(image_id: u64, category_id: u64, bbox: [f64; 4]) -> CocoGt {
    CocoGt {
        image_id,
        category_id,
        bbox,
        area: bbox[2] * bbox[3],
        iscrowd: false,
    }
}

fn det(image_id: u64, category_id: u64, bbox: [f64; 4], score: f64) -> CocoDet {
    CocoDet {
        image_id,
        category_id,
        bbox,
        score,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn perfect_detection_is_one_and_missing_sizes_are_minus_one() {
    let m = evaluate_coco(
        &[gt(1, 1, [10., 10., 50., 50.])],
        &[det(1, 1, [10., 10., 50., 50.], 0.9)],
    );
    assert!(close(m.ap, 1.0) && close(m.ap50, 1.0) && close(m.ap75, 1.0));
    // 50x50 = 2500 px: medium; no small or large ground truth.
    assert!(close(m.ap_medium, 1.0) && m.ap_small == -1.0 && m.ap_large == -1.0);
}

#[test]
fn iou_between_thresholds() {
    // Detection [0,0,10,6.2] on gt [0,0,10,10]: IoU 0.62, a match at 0.50, 0.55 and 0.60
    // only: 3 of 10 thresholds have precision 1 at every recall point -> AP 0.3.
    let m = evaluate_coco(
        &[gt(1, 1, [0., 0., 10., 10.])],
        &[det(1, 1, [0., 0., 10., 6.2], 0.9)],
    );
    assert!(close(m.ap, 0.3), "{}", m.ap);
    assert!(close(m.ap50, 1.0) && close(m.ap75, 0.0));
}

#[test]
fn false_positive_above_true_positive() {
    // Two gts, a false positive scored .9 then a hit scored .8: cumulative recall
    // [0, .5], precision [0, .5] -> envelope [.5, .5]. Recall points 0, .01, ..., .50
    // (51 of 101) read .5, the rest 0 -> AP = 51 * .5 / 101 at every threshold.
    let m = evaluate_coco(
        &[
            gt(1, 1, [0., 0., 20., 20.]),
            gt(1, 1, [100., 100., 20., 20.]),
        ],
        &[
            det(1, 1, [50., 50., 20., 20.], 0.9),
            det(1, 1, [0., 0., 20., 20.], 0.8),
        ],
    );
    assert!(close(m.ap, 25.5 / 101.0), "{}", m.ap);
}

#[test]
fn crowd_regions_absorb_detections() {
    // A detection inside a crowd box is matched to it and ignored (IoU with a crowd is
    // intersection over the detection's area = 1), so the real hit alone gives AP 1.
    let mut crowd = gt(1, 1, [200., 200., 200., 200.]);
    crowd.iscrowd = true;
    let m = evaluate_coco(
        &[gt(1, 1, [0., 0., 20., 20.]), crowd],
        &[
            det(1, 1, [250., 250., 30., 30.], 0.95),
            det(1, 1, [0., 0., 20., 20.], 0.5),
        ],
    );
    assert!(close(m.ap, 1.0), "{}", m.ap);
}

#[test]
fn classes_are_averaged_and_never_cross_matched() {
    // Class 1 found perfectly (AP 1); class 2's only detection is labelled 1 at class 2's
    // box, so for class 1 it is a false positive below the hit (no effect on AP 1) and
    // class 2 gets AP 0. Mean over classes: 0.5.
    let m = evaluate_coco(
        &[gt(1, 1, [0., 0., 40., 40.]), gt(2, 2, [0., 0., 40., 40.])],
        &[
            det(1, 1, [0., 0., 40., 40.], 0.9),
            det(2, 1, [0., 0., 40., 40.], 0.3),
        ],
    );
    assert!(close(m.ap, 0.5), "{}", m.ap);
    assert!(close(m.per_category[&1], 1.0) && close(m.per_category[&2], 0.0));
}
