#!/usr/bin/env python3
"""Writes systematic seeds of the `wider_bbx_gt` and `prediction_file` targets into
/tmp/wider_bbx_gt_seeds and /tmp/prediction_file_seeds: valid files, then each field of a
line replaced by a value of the wrong kind or range, counts that disagree with the lines,
and line-ending and whitespace corners. Merge them into the corpora with libFuzzer
(`-merge=1`)."""
from pathlib import Path

VALUES = ["x", "-1", "0", "0.5", "3", "1e39", "-1e39", "nan", "inf", "-inf", "1e308",
          "99999999999999999999", "+2", "0x10", "", "1 2"]
FACE = ["10", "20", "30", "40", "1", "0", "0", "0", "2", "1"]
DET = ["10.0", "20.0", "30.0", "40.0", "0.9"]


def write(target, seeds):
    out = Path(f"/tmp/{target}_seeds")
    out.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(seeds):
        (out / f"seed_{i:04}").write_text(text)
    print(f"{len(seeds)} seeds in {out}")


gt = ["0--Parade/0_Parade_marchingband_1_465.jpg\n1\n" + " ".join(FACE) + "\n"
      "1--Handshaking/a b.png\n0\n0 0 0 0 0 0 0 0 0 0\n"]
for col in range(len(FACE)):
    for v in VALUES:
        face = FACE.copy()
        face[col] = v
        gt.append("e/a.jpg\n1\n" + " ".join(face) + "\n")
for count in ["2", "0", "-1", "x", "999999999", "18446744073709551616", ""]:
    gt.append(f"e/a.jpg\n{count}\n" + " ".join(FACE) + "\n")
for name in ["e/a.JPEG", "a.png", "e/a.gif", "", "e/.jpg", "e/a.jpg.txt", "/abs/a.jpg",
             "e\\a.jpg", "e/\u00e9.jpg"]:
    gt.append(f"{name}\n1\n" + " ".join(FACE) + "\n")
gt += ["e/a.jpg\r\n1\r\n" + " ".join(FACE) + "\r\n", "\n\n  e/a.jpg  \n 1 \n" + "\t".join(FACE),
       "e/a.jpg\n1\n", "e/a.jpg\n", "e/a.jpg\n1\n" + " ".join(FACE[:9]) + "\n",
       "e/a.jpg\n1\n" + " ".join(FACE + ["0"]) + "\n"]
write("wider_bbx_gt", gt)

pred = ["0_Parade_marchingband_1_465\n2\n" + " ".join(DET) + "\n1 2 3 4 0.5\n", "img\n0\n"]
for col in range(len(DET)):
    for v in VALUES:
        det = DET.copy()
        det[col] = v
        pred.append("img\n1\n" + " ".join(det) + "\n")
for count in ["2", "0", "-1", "x", "999999999", "18446744073709551616", "", "1.0"]:
    pred.append(f"img\n{count}\n" + " ".join(DET) + "\n")
pred += ["img\r\n1\r\n" + " ".join(DET) + "\r\n", "", "img", "img\n1\n" + " ".join(DET[:4]),
         "img\n1\n" + " ".join(DET + ["1"]) + "\n", "img\n1\n\n" + " ".join(DET) + "\n",
         "e/img.jpg\n1\n" + " ".join(DET) + "\n"]
write("prediction_file", pred)
