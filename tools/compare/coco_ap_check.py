"""Cross-checks candletron's COCO box AP against pycocotools on random cases (by hand,
not in CI): `cargo build --example coco_eval_json && python3 tools/compare/coco_ap_check.py`
(needs `pip install pycocotools`). Prints the largest difference over all metrics."""
import os
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import json, random, subprocess, io, contextlib
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
worst=0
for seed in range(12):
    rnd=random.Random(seed)
    images=[{"id":i,"width":640,"height":480} for i in range(1,9)]
    cats=[{"id":c} for c in (1,3,7)]
    anns=[]; dets=[]
    aid=1
    for im in images:
        for _ in range(rnd.randint(0,12)):
            w=rnd.choice([rnd.uniform(4,30),rnd.uniform(30,100),rnd.uniform(100,300)]); h=w*rnd.uniform(0.5,1.5)
            x=rnd.uniform(0,600); y=rnd.uniform(0,450); c=rnd.choice([1,3,7])
            crowd=1 if rnd.random()<0.08 else 0
            anns.append({"id":aid,"image_id":im["id"],"category_id":c,"bbox":[x,y,w,h],"area":w*h*rnd.uniform(0.6,1.0),"iscrowd":crowd}); aid+=1
            for _ in range(rnd.randint(0,2)):
                j=lambda v,s: v+rnd.gauss(0,s)
                dets.append({"image_id":im["id"],"category_id":c if rnd.random()<0.85 else rnd.choice([1,3,7]),"bbox":[j(x,w*0.1),j(y,h*0.1),max(1,j(w,w*0.1)),max(1,j(h,h*0.1))],"score":round(rnd.random(),2)})
        for _ in range(rnd.randint(0,4)):
            dets.append({"image_id":im["id"],"category_id":rnd.choice([1,3,7]),"bbox":[rnd.uniform(0,600),rnd.uniform(0,400),rnd.uniform(5,150),rnd.uniform(5,150)],"score":round(rnd.random(),2)})
    gt=COCO(); gt.dataset={"images":images,"categories":cats,"annotations":anns}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex(); dt=gt.loadRes(dets) if dets else None
        E=COCOeval(gt,dt,"bbox"); E.evaluate(); E.accumulate(); E.summarize()
    ref=dict(zip(["AP","AP50","AP75","APs","APm","APl"],E.stats[:6]))
    out=subprocess.run(["./target/debug/examples/coco_eval_json"],input=json.dumps({"annotations":anns,"dets":dets}),capture_output=True,text=True,cwd=ROOT).stdout
    ours=json.loads(out)
    d=max(abs(ours[k]-ref[k]) for k in ref); worst=max(worst,d)
    print(seed, len(anns), len(dets), {k:round(ref[k],4) for k in ref}, "maxdiff", d)
print("worst", worst)
