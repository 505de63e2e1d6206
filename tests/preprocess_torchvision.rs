//! A classifier's preprocessing equals torchvision's `Resize` + `CenterCrop` pixel for
//! pixel, on images whose crop margins are odd (where Python's round-half-to-even puts
//! the crop one pixel away from a naive rounding), grey and RGBA included. The fixture is
//! written by `tools/compare/torchvision_center_crop.py`.

use std::path::Path;

use candletron::data::transforms::resize_short_center_crop;

#[test]
fn center_crops_equal_torchvision_on_odd_margins() {
    let dir = Path::new("tests/data/torchvision_crop");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let short = case["resize_short"].as_u64().unwrap() as usize;
        let crop = case["crop"].as_u64().unwrap() as usize;
        let src = image::open(dir.join(format!("{name}.png"))).unwrap();
        assert_eq!(
            (src.width() as u64, src.height() as u64),
            (
                case["width"].as_u64().unwrap(),
                case["height"].as_u64().unwrap()
            )
        );
        let want = image::open(dir.join(format!("{name}_crop.png")))
            .unwrap()
            .to_rgb8();
        let got = resize_short_center_crop(&src.to_rgb8(), short, crop).unwrap();
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let differing = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} values differ from torchvision"
        );
    }
}
