//! Reads `{"annotations": [COCO boxes], "dets": [COCO results]}` on stdin and prints the
//! COCO box metrics as JSON; used by `tools/compare/coco_ap_check.py` against pycocotools.
use candletron::evaluation::coco::*;
fn main() {
    let v: serde_json::Value = serde_json::from_reader(std::io::stdin()).unwrap();
    let gts: Vec<CocoGt> = v["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let b: Vec<f64> = a["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            CocoGt {
                image_id: a["image_id"].as_u64().unwrap(),
                category_id: a["category_id"].as_u64().unwrap(),
                bbox: [b[0], b[1], b[2], b[3]],
                area: a["area"].as_f64().unwrap(),
                iscrowd: a["iscrowd"].as_u64().unwrap() == 1,
            }
        })
        .collect();
    let dets: Vec<CocoDet> = v["dets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let b: Vec<f64> = a["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            CocoDet {
                image_id: a["image_id"].as_u64().unwrap(),
                category_id: a["category_id"].as_u64().unwrap(),
                bbox: [b[0], b[1], b[2], b[3]],
                score: a["score"].as_f64().unwrap(),
            }
        })
        .collect();
    let m = evaluate_coco(&gts, &dets);
    println!("{}", serde_json::to_string(&m.to_map()).unwrap());
}
