//! SSDLite's inference as ONNX nodes, equal to [`SsdLite::inference`] step by step: class
//! probabilities, per-level top-k candidates above the score threshold, box decoding from
//! the fixed anchors of the export size, clipping, dropping empty boxes, per-class NMS
//! with the standard `NonMaxSuppression` operator, then the best
//! `TEST.DETECTIONS_PER_IMAGE` by score.

use candle_core::Result;

use super::{ClsLoss, SsdLite};
use crate::modeling::box_regression::SCALE_CLAMP;
use crate::modeling::{ExportBatch, OnnxExportSpec};
use crate::onnx::{Attr, DataType, Dim, OnnxGraph};
use crate::structures::boxes::Box4;

/// Column `i` of a (B, R, 4) value as (B, R).
fn column(g: &mut OnnxGraph, t: &str, i: i64) -> String {
    let idx = g.ints("col", &[], &[i]);
    g.node("Gather", &[t, &idx], vec![("axis", Attr::Int(2))])
}

fn unsqueeze(g: &mut OnnxGraph, t: &str, axis: i64) -> String {
    let axes = g.int_list("axes", &[axis]);
    g.node("Unsqueeze", &[t, &axes], vec![])
}

fn slice(g: &mut OnnxGraph, t: &str, axis: i64, start: i64, end: i64) -> String {
    let (s, e, a) = (
        g.int_list("starts", &[start]),
        g.int_list("ends", &[end]),
        g.int_list("axes", &[axis]),
    );
    g.node("Slice", &[t, &s, &e, &a], vec![])
}

impl SsdLite {
    /// (B, R, 4) boxes decoded from `deltas` against `anchors` with the (10, 10, 5, 5)
    /// coder, clipped to the `width` x `height` input, and the (B, R) mask of non-empty
    /// boxes. The arithmetic is `Box2BoxTransform::apply_deltas`', operation for
    /// operation, so the boxes agree to float rounding.
    fn export_decode(
        &self,
        g: &mut OnnxGraph,
        deltas: &str,
        anchors: &[Box4],
        (height, width): (usize, usize),
    ) -> (String, String) {
        let r = anchors.len();
        let mut cols = [vec![0f32; r], vec![0f32; r], vec![0f32; r], vec![0f32; r]];
        for (i, a) in anchors.iter().enumerate() {
            let (sw, sh) = (a[2] - a[0], a[3] - a[1]);
            cols[0][i] = sw;
            cols[1][i] = sh;
            cols[2][i] = a[0] + 0.5 * sw;
            cols[3][i] = a[1] + 0.5 * sh;
        }
        let [sw, sh, sx, sy] = [
            ("anchor_w", &cols[0]),
            ("anchor_h", &cols[1]),
            ("anchor_cx", &cols[2]),
            ("anchor_cy", &cols[3]),
        ]
        .map(|(n, c)| g.floats(n, &[1, r], c));
        let [wx, wy, ww, wh] = self.coder.weights.map(|w| g.scalar("box_weight", w));
        let d: Vec<String> = (0..4).map(|i| column(g, deltas, i)).collect();
        let centre = |g: &mut OnnxGraph, d: &str, w: &str, size: &str, origin: &str| {
            let scaled = g.node("Div", &[d, w], vec![]);
            let m = g.node("Mul", &[&scaled, size], vec![]);
            g.node("Add", &[&m, origin], vec![])
        };
        let cx = centre(g, &d[0], &wx, &sw, &sx);
        let cy = centre(g, &d[1], &wy, &sh, &sy);
        let clamp = g.scalar("scale_clamp", SCALE_CLAMP);
        let extent = |g: &mut OnnxGraph, d: &str, w: &str, size: &str| {
            let scaled = g.node("Div", &[d, w], vec![]);
            let clamped = g.node("Min", &[&scaled, &clamp], vec![]);
            let e = g.node("Exp", &[&clamped], vec![]);
            g.node("Mul", &[&e, size], vec![])
        };
        let w = extent(g, &d[2], &ww, &sw);
        let h = extent(g, &d[3], &wh, &sh);
        let half = g.scalar("half", 0.5);
        let hw = g.node("Mul", &[&half, &w], vec![]);
        let hh = g.node("Mul", &[&half, &h], vec![]);
        let zero = g.scalar("zero", 0.0);
        let (wmax, hmax) = (
            g.scalar("width", width as f32),
            g.scalar("height", height as f32),
        );
        let clip = |g: &mut OnnxGraph, v: String, hi: &str| {
            let lo = g.node("Max", &[&v, &zero], vec![]);
            g.node("Min", &[&lo, hi], vec![])
        };
        let x1 = g.node("Sub", &[&cx, &hw], vec![]);
        let y1 = g.node("Sub", &[&cy, &hh], vec![]);
        let x2 = g.node("Add", &[&cx, &hw], vec![]);
        let y2 = g.node("Add", &[&cy, &hh], vec![]);
        let coords = [
            clip(g, x1, &wmax),
            clip(g, y1, &hmax),
            clip(g, x2, &wmax),
            clip(g, y2, &hmax),
        ];
        let bw = g.node("Sub", &[&coords[2], &coords[0]], vec![]);
        let bh = g.node("Sub", &[&coords[3], &coords[1]], vec![]);
        let zero = g.scalar("zero", 0.0);
        let (pw, ph) = (
            g.node("Greater", &[&bw, &zero], vec![]),
            g.node("Greater", &[&bh, &zero], vec![]),
        );
        let valid = g.node("And", &[&pw, &ph], vec![]);
        let expanded: Vec<String> = coords.iter().map(|c| unsqueeze(g, c, 2)).collect();
        let refs: Vec<&str> = expanded.iter().map(String::as_str).collect();
        let boxes = g.node("Concat", &refs, vec![("axis", Attr::Int(2))]);
        (boxes, valid)
    }

    pub(super) fn export(
        &self,
        g: &mut OnnxGraph,
        x: &str,
        spec: &OnnxExportSpec,
    ) -> Result<String> {
        let feats = self.backbone.export_onnx(g, x)?;
        let shapes = self.backbone.output_shape();
        let mut levels = Vec::new();
        let mut sizes = Vec::new();
        for f in &self.in_features {
            let (Some(v), Some(s)) = (feats.get(f), shapes.get(f)) else {
                candle_core::bail!("SSDLite: the backbone export has no `{f}`");
            };
            levels.push(v.clone());
            sizes.push((spec.height / s.stride, spec.width / s.stride));
        }
        let (scores, deltas) = self.head.export_onnx(g, &levels)?;
        let anchors = self.anchors.grid_anchors(&sizes);
        let per_level: Vec<usize> = sizes
            .iter()
            .zip(self.anchors.num_cell_anchors())
            .map(|(&(h, w), a)| h * w * a)
            .collect();
        let r = anchors.len();
        let batch = spec.batch.dim();
        let s = self.head.num_scores();
        if spec.raw {
            g.output(
                &scores,
                "scores",
                DataType::Float,
                vec![batch.clone(), Dim::Fixed(r), Dim::Fixed(s)],
            );
            g.output(
                &deltas,
                "deltas",
                DataType::Float,
                vec![batch, Dim::Fixed(r), Dim::Fixed(4)],
            );
            let flat: Vec<f32> = anchors.iter().flatten().copied().collect();
            let a = g.floats("anchor_boxes", &[r, 4], &flat);
            g.output(
                &a,
                "anchors",
                DataType::Float,
                vec![Dim::Fixed(r), Dim::Fixed(4)],
            );
            let (wx, wy, ww, wh) = self.coder.weights.into();
            return Ok(format!(
                "raw head outputs: scores float32 (batch, {r}, {s}) before {}; deltas float32 \
                 (batch, {r}, 4) to decode against anchors (x1, y1, x2, y2; {r}, 4) with \
                 weights ({wx}, {wy}, {ww}, {wh}) and log-scale clamp {SCALE_CLAMP}",
                match self.params.cls_loss {
                    ClsLoss::CrossEntropy => "softmax (last column: background)",
                    ClsLoss::Focal => "sigmoid",
                }
            ));
        }
        let k = self.params.num_classes;
        let probs = match self.params.cls_loss {
            ClsLoss::CrossEntropy => g.node("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]),
            ClsLoss::Focal => g.node("Sigmoid", &[&scores], vec![]),
        };
        let probs = slice(g, &probs, 2, 0, k as i64);
        let (boxes, valid) = self.export_decode(g, &deltas, &anchors, (spec.height, spec.width));

        // Per level: the top-k (anchor, class) pairs, their boxes, and -1 for empty boxes.
        let kk = g.ints("num_classes", &[], &[k as i64]);
        let minus_one = g.scalar("minus_one", -1.0);
        let flat_shape = g.int_list("shape", &[0, -1]);
        let four = g.int_list("shape", &[1, 1, 4]);
        let (mut cand_boxes, mut cand_scores, mut cand_classes) = (vec![], vec![], vec![]);
        let mut start = 0;
        for &len in &per_level {
            let p = slice(g, &probs, 1, start as i64, (start + len) as i64);
            let flat = g.node("Reshape", &[&p, &flat_shape], vec![]);
            let top = self.params.topk_candidates.min(len * k).max(1);
            let kt = g.int_list("k", &[top as i64]);
            let tv = g.node_n(
                "TopK",
                &[&flat, &kt],
                vec![
                    ("axis", Attr::Int(1)),
                    ("largest", Attr::Int(1)),
                    ("sorted", Attr::Int(1)),
                ],
                2,
            );
            let (vals, idx) = (&tv[0], &tv[1]);
            let a = g.node("Div", &[idx, &kk], vec![]);
            let offset = g.ints("level_start", &[], &[start as i64]);
            let anchor = g.node("Add", &[&a, &offset], vec![]);
            let class = g.node("Mod", &[idx, &kk], vec![("fmod", Attr::Int(0))]);
            // Per image: `GatherElements` along the anchors (the four coordinates by an
            // index broadcast to (B, k, 4)).
            let gi = unsqueeze(g, &anchor, 2);
            let gi4 = g.node("Expand", &[&gi, &four], vec![]);
            let along = vec![("axis", Attr::Int(1))];
            let b = g.node("GatherElements", &[&boxes, &gi4], along.clone());
            let v = g.node("GatherElements", &[&valid, &anchor], along);
            let sc = g.node("Where", &[&v, vals, &minus_one], vec![]);
            cand_boxes.push(b);
            cand_scores.push(sc);
            cand_classes.push(class);
            start += len;
        }
        let cat = |g: &mut OnnxGraph, v: &[String]| {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            g.node("Concat", &refs, vec![("axis", Attr::Int(1))])
        };
        let boxes_c = cat(g, &cand_boxes);
        let scores_c = cat(g, &cand_scores);
        let classes_c = cat(g, &cand_classes);

        // NMS per class: each candidate scores only in its own class's row.
        let scores_row = unsqueeze(g, &scores_c, 1);
        let nms_scores = if k == 1 {
            scores_row
        } else {
            let classes_row = unsqueeze(g, &classes_c, 1);
            let ids: Vec<i64> = (0..k as i64).collect();
            let range = g.ints("class_ids", &[1, k, 1], &ids);
            let mine = g.node("Equal", &[&classes_row, &range], vec![]);
            g.node("Where", &[&mine, &scores_row, &minus_one], vec![])
        };
        let cap = self.params.detections_per_image as i64;
        let max_out = g.int_list("max_output_boxes_per_class", &[cap]);
        let iou = g.floats("iou_threshold", &[1], &[self.params.nms_thresh]);
        let thresh = g.floats("score_threshold", &[1], &[self.params.score_thresh]);
        let selected = g.node(
            "NonMaxSuppression",
            &[&boxes_c, &nms_scores, &max_out, &iou, &thresh],
            vec![],
        );
        let cols = g.int_list("batch_and_box", &[0, 2]);
        let bm = g.node("Gather", &[&selected, &cols], vec![("axis", Attr::Int(1))]);
        let sel_boxes = g.node("GatherND", &[&boxes_c, &bm], vec![]);
        let sel_scores = g.node("GatherND", &[&scores_c, &bm], vec![]);
        let sel_classes = g.node("GatherND", &[&classes_c, &bm], vec![]);
        let zero = g.ints("batch_col", &[], &[0]);
        let sel_batch = g.node("Gather", &[&selected, &zero], vec![("axis", Attr::Int(1))]);

        // Best first.
        // The count computed from the selection's int64 values rather than by `Shape` or
        // `Cast`: some runtimes keep shapes, and anything cast to int64, in a symbolic
        // type of their own that TopK's `k` does not accept.
        let zero_i = g.ints("zero", &[], &[0]);
        let one_i = g.ints("one", &[], &[1]);
        let nothing = g.node("Mul", &[&sel_batch, &zero_i], vec![]);
        let ones = g.node("Add", &[&nothing, &one_i], vec![]);
        let count = g.node("ReduceSum", &[&ones], vec![("keepdims", Attr::Int(1))]);
        // One image: the best `cap` only (with a batch, the cap holds per class and image
        // through NMS). TopK with `k = min(count, cap)` sorts and caps in one.
        let single = spec.batch == ExportBatch::Fixed(1);
        let count = if single {
            let cap_v = g.int_list("cap", &[cap]);
            g.node("Min", &[&count, &cap_v], vec![])
        } else {
            count
        };
        let order = g.node_n(
            "TopK",
            &[&sel_scores, &count],
            vec![
                ("axis", Attr::Int(0)),
                ("largest", Attr::Int(1)),
                ("sorted", Attr::Int(1)),
            ],
            2,
        );
        let gather = |g: &mut OnnxGraph, t: &str| {
            g.node("Gather", &[t, &order[1]], vec![("axis", Attr::Int(0))])
        };
        let out_boxes = gather(g, &sel_boxes);
        let out_scores = order[0].clone();
        let out_classes = gather(g, &sel_classes);
        let out_batch = gather(g, &sel_batch);
        let kdim = || Dim::Named("K".into());
        g.output(
            &out_boxes,
            "boxes",
            DataType::Float,
            vec![kdim(), Dim::Fixed(4)],
        );
        g.output(&out_scores, "scores", DataType::Float, vec![kdim()]);
        g.output(&out_classes, "classes", DataType::Int64, vec![kdim()]);
        let mut layout = format!(
            "boxes float32 (K, 4) x1, y1, x2, y2 in input pixels; scores float32 (K); classes \
             int64 (K); best first; scores above {} after per-class NMS at IoU {}",
            self.params.score_thresh, self.params.nms_thresh
        );
        if single {
            layout.push_str(&format!("; at most {cap} detections"));
        } else {
            g.output(&out_batch, "batch_index", DataType::Int64, vec![kdim()]);
            layout.push_str(&format!(
                "; batch_index int64 (K): the image of each detection; at most {cap} per class \
                 and image"
            ));
        }
        Ok(layout)
    }
}
