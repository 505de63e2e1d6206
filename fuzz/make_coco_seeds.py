#!/usr/bin/env python3
"""Writes systematic seeds of the `coco_json` target into a folder (default
/tmp/coco_seeds): a valid instances file, then the same file with each field of each
record kind missing, null, or of the wrong type or range, with duplicate and dangling ids
and JSON's lexical corners. Merge them into the corpus with libFuzzer (`-merge=1`)."""
import copy
import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/coco_seeds")
out.mkdir(parents=True, exist_ok=True)
base = {
    "info": {"year": 2017}, "licenses": [],
    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
               {"id": 2, "file_name": "d/b c.png", "width": 10, "height": 10}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 12],
                     "area": 120, "iscrowd": 0, "segmentation": [[1, 2, 3, 4, 5, 6]]},
                    {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0.5, 0, 0, 4],
                     "iscrowd": 1}],
    "categories": [{"id": 7, "name": "face", "supercategory": "x"}, {"id": 3, "name": "y"}],
}
values = [None, "1", -1, 0, 1.5, 1e300, -1e300, 18446744073709551615, 18446744073709551616,
          True, [], {}, [1, 2, 3], "\u00e9\ud83d\ude00"]
n = 0


def put(text):
    global n
    (out / f"seed_{n:04}.json").write_text(text)
    n += 1


put(json.dumps(base))
put(json.dumps(base, indent=2))
for section in ("images", "annotations", "categories"):
    for field in base[section][0]:
        doc = copy.deepcopy(base)
        del doc[section][0][field]
        put(json.dumps(doc))
        for v in values:
            doc = copy.deepcopy(base)
            doc[section][0][field] = v
            put(json.dumps(doc))
    for v in values:
        doc = copy.deepcopy(base)
        doc[section] = v
        put(json.dumps(doc))
    doc = copy.deepcopy(base)
    del doc[section]
    put(json.dumps(doc))
    doc = copy.deepcopy(base)
    doc[section].append(copy.deepcopy(doc[section][0]))
    put(json.dumps(doc))
for bbox in ([1, 2, 3], [1, 2, 3, 4, 5], ["1", 2, 3, 4], [1e39, 0, 1e39, 1], [-5, -5, -1, -1],
             [0, 0, 1e-45, 1e-45], [1, 2, 3, None]):
    doc = copy.deepcopy(base)
    doc["annotations"][0]["bbox"] = bbox
    put(json.dumps(doc))
for key, value in (("image_id", 99), ("category_id", 99)):
    doc = copy.deepcopy(base)
    doc["annotations"][0][key] = value
    put(json.dumps(doc))
text = json.dumps(base)
for lexical in ('{"images": [], "annotations": [], "categories": [], "images": []}',
                text.replace('"a.jpg"', '"a\\u0000\\ud800\\n.jpg"'), text.replace("64", "6.4e1"),
                text.replace("64", "1e400"), text.replace("64", "-0"), text + " ", text + "x",
                text[:-1], "\ufeff" + text, "[" * 200 + "]" * 200, "", "null", '"x"'):
    put(lexical)
print(f"{n} seeds in {out}")
